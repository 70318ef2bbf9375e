"""firmware.firstboot: the installer's evse-setup.toml applied to a charger laid out in temporary directories.

What must hold: the values land in config.toml as text edits (comments and every other key byte-for-byte kept),
a bad value changes nothing and names its key in evse-setup.error.txt, secrets never stay on the boot partition,
and a second run is a no-op.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import firstboot
from firmware.config import load_settings

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config.toml"

SETUP = """\
# written by the installer
[charger]
id = "CP-GARAGE-7"   # as on the sticker

[ocpp]
url = "wss://csms.example.com/ocpp"
authorization_key = "s3cr3t-key-0123456789"
security_profile = 2

[wifi]
country = "DE"
ssid = "Garage WLAN"
psk = "correct horse battery"

[system]
hostname = "evse-garage"
timezone = "Europe/Berlin"
"""


class Charger:
    """A boot partition, a config and a root, all under tmp_path."""

    def __init__(self, tmp_path: Path, setup: str | None = SETUP) -> None:
        self.boot = tmp_path / "boot"
        self.root = tmp_path / "root"
        self.config = tmp_path / "etc/evse/config.toml"
        self.boot.mkdir()
        (self.root / "etc").mkdir(parents=True)
        (self.root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
        self.config.parent.mkdir(parents=True)
        self.config.write_text(CONFIG.read_text())
        self.config.chmod(0o640)
        (self.boot / "cmdline.txt").write_text("console=serial0,115200 root=PARTUUID=abc-02 rootwait quiet\n")
        if setup is not None:
            self.setup.write_text(setup)

    @property
    def setup(self) -> Path:
        return self.boot / firstboot.SETUP_NAME

    @property
    def applied(self) -> Path:
        return self.boot / firstboot.APPLIED_NAME

    @property
    def error(self) -> Path:
        return self.boot / firstboot.ERROR_NAME

    @property
    def keyfile(self) -> Path:
        return self.root / firstboot.KEYFILE

    def run(self) -> int:
        return firstboot.main(["--boot", str(self.boot), "--config", str(self.config), "--root", str(self.root)])


def _changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    old, new = before.splitlines(), after.splitlines()
    assert len(old) == len(new), "lines were added or removed"
    return [(a, b) for a, b in zip(old, new, strict=True) if a != b]


# ── the whole program ────────────────────────────────────────────────────────────────────────────────────
def test_applies_every_value_and_keeps_the_rest_of_the_config(tmp_path: Path) -> None:
    c = Charger(tmp_path)
    assert c.run() == 0

    text = c.config.read_text()
    assert _changed_lines(CONFIG.read_text(), text) == [
        ('id = "CP-0001"', 'id = "CP-GARAGE-7"'),
        ('url = ""', 'url = "wss://csms.example.com/ocpp"'),
        ("security_profile = 0", "security_profile = 2"),
        ('authorization_key = ""', 'authorization_key = "s3cr3t-key-0123456789"'),
    ]
    settings_ = load_settings(c.config)
    assert settings_.charger.id == "CP-GARAGE-7"
    assert settings_.ocpp.url == "wss://csms.example.com/ocpp"
    assert settings_.ocpp.authorization_key == "s3cr3t-key-0123456789"
    assert stat.S_IMODE(c.config.stat().st_mode) == 0o640  # the config's mode is kept

    keyfile = c.keyfile.read_text()
    assert stat.S_IMODE(c.keyfile.stat().st_mode) == 0o600
    assert "ssid=Garage WLAN\n" in keyfile
    assert "psk=correct horse battery\n" in keyfile
    assert "key-mgmt=wpa-psk\n" in keyfile and "autoconnect=true\n" in keyfile
    assert (c.boot / "cmdline.txt").read_text() == (
        "console=serial0,115200 root=PARTUUID=abc-02 rootwait quiet cfg80211.ieee80211_regdom=DE\n"
    )
    assert (c.root / "etc/hostname").read_text() == "evse-garage\n"
    assert (c.root / "etc/hosts").read_text() == "127.0.0.1\tlocalhost\n127.0.1.1\tevse-garage\n"
    assert (c.root / "etc/timezone").read_text() == "Europe/Berlin\n"
    assert os.readlink(c.root / "etc/localtime") == "/usr/share/zoneinfo/Europe/Berlin"

    assert not c.setup.exists() and not c.error.exists()
    applied = c.applied.read_text()
    assert "correct horse" not in applied and "s3cr3t" not in applied
    assert "# written by the installer" in applied and 'id = "CP-GARAGE-7"   # as on the sticker' in applied
    data = tomllib.loads(applied)
    assert "psk" not in data["wifi"] and "authorization_key" not in data["ocpp"]
    assert data["wifi"]["ssid"] == "Garage WLAN"


def test_a_second_run_without_a_setup_file_changes_nothing(tmp_path: Path) -> None:
    c = Charger(tmp_path)
    assert c.run() == 0
    config, keyfile, applied = c.config.read_text(), c.keyfile.read_text(), c.applied.read_text()
    assert c.run() == 0
    assert (c.config.read_text(), c.keyfile.read_text(), c.applied.read_text()) == (config, keyfile, applied)


def test_applying_the_same_file_twice_gives_the_same_files(tmp_path: Path) -> None:
    c = Charger(tmp_path)
    assert c.run() == 0
    config, keyfile = c.config.read_text(), c.keyfile.read_text()
    c.setup.write_text(SETUP)
    assert c.run() == 0
    assert (c.config.read_text(), c.keyfile.read_text()) == (config, keyfile)
    assert (c.boot / "cmdline.txt").read_text().count("cfg80211.ieee80211_regdom=") == 1


def test_no_setup_file_at_all_is_fine(tmp_path: Path) -> None:
    c = Charger(tmp_path, setup=None)
    assert c.run() == 0
    assert c.config.read_text() == CONFIG.read_text()
    assert not c.keyfile.exists() and not c.error.exists() and not c.applied.exists()


def test_the_unedited_template_applies_nothing_and_stays(tmp_path: Path) -> None:
    template = (REPO / "deploy/image/evse-setup.toml").read_text()
    c = Charger(tmp_path, template)
    assert c.run() == 0
    assert c.setup.read_text() == template
    assert c.config.read_text() == CONFIG.read_text()
    assert not c.applied.exists() and not c.error.exists()


def test_the_template_filled_in_as_its_comments_say_is_applied(tmp_path: Path) -> None:
    """Uncommenting the template's example lines gives a valid setup (the example values pass every check)."""
    template = (REPO / "deploy/image/evse-setup.toml").read_text()
    filled = re.sub(r"(?m)^# ([a-z_]+ = .*|\[[a-z]+\])$", r"\1", template)
    c = Charger(tmp_path, filled)
    assert c.run() == 0, c.error.read_text() if c.error.exists() else ""
    settings_ = load_settings(c.config)
    assert settings_.charger.id == "CP-0001" and settings_.ocpp.url == "wss://csms.example.com/ocpp"
    assert settings_.ocpp.security_profile == 2 and settings_.ocpp.authorization_key
    assert c.keyfile.exists() and (c.root / "etc/hostname").exists()


def test_only_the_charger_id(tmp_path: Path) -> None:
    c = Charger(tmp_path, '[charger]\nid = "CP-2"\n')
    assert c.run() == 0
    assert _changed_lines(CONFIG.read_text(), c.config.read_text()) == [('id = "CP-0001"', 'id = "CP-2"')]
    assert not c.keyfile.exists()
    assert (c.boot / "cmdline.txt").read_text() == "console=serial0,115200 root=PARTUUID=abc-02 rootwait quiet\n"


@pytest.mark.parametrize(
    ("setup", "key"),
    [
        ('[charger]\nid = "CP 1/2"\n', "charger.id"),
        ('[ocpp]\nurl = "https://csms.example.com"\n', "ocpp.url"),
        ('[ocpp]\nauthorization_key = "short"\nsecurity_profile = 1\n', "ocpp.authorization_key"),
        ('[ocpp]\nauthorization_key = "long-enough-key-123"\n', "ocpp.authorization_key"),
        (
            '[ocpp]\nsecurity_profile = 2\nauthorization_key = "long-enough-key-123"\nurl = "ws://x.example"\n',
            "ocpp.url",
        ),
        ("[ocpp]\nsecurity_profile = 7\n", "ocpp.security_profile"),
        ("[charger]\nid = 12\n", "charger.id"),
        ('[wifi]\nssid = "Home"\npsk = "short"\ncountry = "DE"\n', "wifi.psk"),
        ('[wifi]\nssid = "Home"\npsk = "long enough"\n', "wifi.country"),
        ('[wifi]\nssid = "Home"\ncountry = "Germany"\n', "wifi.country"),
        ('[wifi]\nssid = "%s"\ncountry = "DE"\n' % ("x" * 33), "wifi.ssid"),
        ('[system]\nhostname = "evse_1"\n', "system.hostname"),
        ('[system]\ntimezone = "Mars/Olympus"\n', "system.timezone"),
        ('[wifi]\npks = "typo typo typo"\n', "wifi.pks"),
        ("[charger]\nmax_current_a = 16\n", "charger.max_current_a"),
    ],
)
def test_a_bad_value_changes_nothing_and_names_the_key(tmp_path: Path, setup: str, key: str) -> None:
    c = Charger(tmp_path, setup)
    cmdline = (c.boot / "cmdline.txt").read_text()
    assert c.run() == 2
    assert c.config.read_text() == CONFIG.read_text()
    assert c.setup.read_text() == setup  # left for the installer to fix
    assert not c.applied.exists() and not c.keyfile.exists()
    assert not (c.root / "etc/hostname").exists()
    assert (c.boot / "cmdline.txt").read_text() == cmdline
    error = c.error.read_text()
    assert f"  {key}: " in error, error
    assert sorted(p.name for p in c.config.parent.iterdir()) == ["config.toml"]  # no temporary left behind


def test_an_error_report_never_shows_a_secret(tmp_path: Path) -> None:
    c = Charger(
        tmp_path,
        '[ocpp]\nauthorization_key = "tiny-secret"\n[wifi]\nssid = "a"\npsk = "' + "\\u00e9" * 8 + '"\n',
    )
    assert c.run() == 2
    error = c.error.read_text()
    assert "ocpp.authorization_key" in error and "wifi.psk" in error and "wifi.country" in error
    assert "tiny-secret" not in error and "\u00e9" not in error


def test_a_fixed_file_is_applied_and_the_error_report_goes(tmp_path: Path) -> None:
    c = Charger(tmp_path, '[charger]\nid = "bad id"\n')
    assert c.run() == 2 and c.error.exists()
    c.setup.write_text('[charger]\nid = "good-id"\n')
    assert c.run() == 0
    assert not c.error.exists()
    assert load_settings(c.config).charger.id == "good-id"


def test_a_setup_file_that_is_not_toml(tmp_path: Path) -> None:
    c = Charger(tmp_path, '[charger]\nid = "unterminated\n')
    assert c.run() == 2
    assert "evse-setup.toml: not valid TOML" in c.error.read_text()
    assert c.config.read_text() == CONFIG.read_text()


def test_a_config_that_was_already_broken_is_reported_not_overwritten(tmp_path: Path) -> None:
    c = Charger(tmp_path, '[charger]\nid = "CP-9"\n')
    c.config.write_text("[charger]\nmax_current_a = 100\n")
    assert c.run() == 2
    assert "charger.max_current_a: 100 is above the maximum 80" in c.error.read_text()
    assert c.config.read_text() == "[charger]\nmax_current_a = 100\n"


def test_an_open_network_and_an_ssid_with_odd_characters(tmp_path: Path) -> None:
    c = Charger(tmp_path, '[wifi]\nssid = "Café \\"5G\\";1"\ncountry = "FR"\n')
    assert c.run() == 0
    keyfile = c.keyfile.read_text()
    assert "[wifi-security]" not in keyfile
    ssid_line = next(line for line in keyfile.splitlines() if line.startswith("ssid="))
    assert bytes(int(b) for b in ssid_line[5:].rstrip(";").split(";")) == 'Café "5G";1'.encode()


def test_a_psk_with_edge_spaces_and_backslashes_is_escaped_for_glib() -> None:
    keyfile = firstboot.nm_keyfile("Home", " a\\b c ")
    assert "psk=\\sa\\\\b c\\s\n" in keyfile


# ── TOML text editing ────────────────────────────────────────────────────────────────────────────────────
def test_set_keys_inserts_a_missing_key_and_a_missing_table() -> None:
    text = "# top\n[charger]\nphases = 1 # one\n"
    out = firstboot.set_keys(text, {("charger", "id"): "X", ("ocpp", "url"): "ws://h"})
    assert out == '# top\n[charger]\nid = "X"\nphases = 1 # one\n\n[ocpp]\nurl = "ws://h"\n'


def test_set_keys_finds_the_key_past_tricky_values() -> None:
    text = (
        '[x]\nm = """\n[charger]\nid = "fake"\n"""\nl = \'\'\'a\'\'\'\'\narr = [\n  "]", # ] comment\n  [1, 2],\n]\n'
        't = { id = "inline" }\n'
        "[charger]\n"
        "'id' = 'old' # keep me\n"
    )
    out = firstboot.set_keys(text, {("charger", "id"): "new"})
    assert out == text.replace("'id' = 'old' # keep me", "'id' = \"new\" # keep me")


def test_a_config_with_a_byte_order_mark_and_crlf_lines(tmp_path: Path) -> None:
    c = Charger(tmp_path, '[charger]\nid = "CP-3"\n')
    c.config.write_bytes(b"\xef\xbb\xbf" + CONFIG.read_text().replace("\n", "\r\n").encode())
    assert c.run() == 0
    text = c.config.read_bytes().decode()  # not read_text: it would turn CRLF into LF
    assert 'id = "CP-3"\r\n' in text and text.count("\r\n") == CONFIG.read_text().count("\n")
    assert load_settings(c.config).charger.id == "CP-3"


def test_set_keys_refuses_an_edit_it_cannot_make_exactly() -> None:
    with pytest.raises(ValueError, match="TOML"):
        firstboot.set_keys('charger = { id = "a" }\n', {("charger", "id"): "b"})


def test_remove_keys_leaves_a_note_and_nothing_of_the_value() -> None:
    text = '[wifi]\nssid = "a"\npsk = """multi\nline"""  # c\ncountry = "DE"\n'
    out = firstboot.remove_keys(text, [("wifi", "psk")])
    assert out == '[wifi]\nssid = "a"\n# wifi.psk: removed after applying\ncountry = "DE"\n'


_IDS = st.from_regex(r"[A-Za-z0-9._-]{1,48}", fullmatch=True)
_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
_HOSTILE = st.one_of(
    _TEXT,
    st.lists(
        st.sampled_from(['"', "'", '"""', "'''", "\\", "\n", "\r\n", "#", "[charger]", "id = ", "\x00", "\x7f", "é"])
    ).map("".join),
)
_HOSTS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
_PATHS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc"], exclude_characters="?#"), max_size=40)
_URLS = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}/{path}",
    st.sampled_from(["ws", "wss"]),
    _HOSTS,
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    _PATHS,
)
_KEYS = st.text(alphabet=st.characters(codec="utf-8"), min_size=16, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(charger_id=_IDS, url=_URLS, key=_KEYS)
def test_valid_values_round_trip_exactly(tmp_path: Path, charger_id: str, url: str, key: str) -> None:
    """Whatever passes validation is read back by the config loader exactly as given; nothing else changes."""
    original = CONFIG.read_text()
    text = firstboot.set_keys(
        original,
        {("charger", "id"): charger_id, ("ocpp", "url"): url, ("ocpp", "authorization_key"): key},
    )
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    loaded = load_settings(path)
    assert (loaded.charger.id, loaded.ocpp.url, loaded.ocpp.authorization_key) == (charger_id, url, key)
    before, after = tomllib.loads(original), tomllib.loads(text)
    after["charger"]["id"], after["ocpp"]["url"] = before["charger"]["id"], before["ocpp"]["url"]
    after["ocpp"]["authorization_key"] = before["ocpp"]["authorization_key"]
    assert after == before
    comments = [line for line in original.splitlines() if line.lstrip().startswith("#")]
    assert [line for line in text.splitlines() if line.lstrip().startswith("#")] == comments


@settings(max_examples=300, deadline=None)
@given(value=_HOSTILE, other=_HOSTILE)
def test_hostile_strings_never_break_the_toml(value: str, other: str) -> None:
    """Quotes, newlines, TOML syntax in a value: the text still parses, to exactly the intended document."""
    base = '# c\n[charger]\nid = "CP-1"  # id\nphases = 3\n[ocpp]\nurl = ""\n'
    text = firstboot.set_keys(base, {("charger", "id"): value, ("ocpp", "authorization_key"): other})
    data = tomllib.loads(text)
    assert data == {"charger": {"id": value, "phases": 3}, "ocpp": {"url": "", "authorization_key": other}}
    assert text.startswith('# c\n[charger]\nid = "') and '"  # id\nphases = 3\n' in text
    again = firstboot.set_keys(text, {("charger", "id"): other})  # editing an edited file works too
    assert tomllib.loads(again)["charger"]["id"] == other


@settings(max_examples=150, deadline=None)
@given(value=_HOSTILE)
def test_a_hostile_secret_is_scrubbed_from_the_applied_copy(value: str) -> None:
    text = '[wifi]\nssid = "x"\npsk = ' + firstboot.toml_string(value) + '  # mine\ncountry = "DE"\n'
    setup = tomllib.loads(text)
    out = firstboot.scrubbed(text, setup)
    if out == firstboot.SCRUB_NOTE:  # only when the secret also reads as other text of the file
        assert value and value in '[wifi]\nssid = "x"\ncountry = "DE"\n# evse-setup.toml as applied (secrets removed)'
        return
    data = tomllib.loads(out)
    assert "psk" not in data["wifi"] and data["wifi"]["ssid"] == "x"
    assert not value or value not in out
