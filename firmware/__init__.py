"""The charger controller: everything above the hardware abstraction layer."""


def version() -> str:
    """The installed package version, or a dev marker when running from a source tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("pievse")
    except PackageNotFoundError:
        return "0.1.0+dev"
