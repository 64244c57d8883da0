"""modelserve: a pure-Python model archiver and multi-model inference server."""

__version__ = "0.1.0"


def package_version() -> str:
    """The installed distribution's version (what pip installed), else the source tree's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelserve")
    except PackageNotFoundError:
        return __version__
