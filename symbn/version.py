"""The version of symbn, in a module of its own so generated banners and the build read it without the package."""

__version__ = "0.1.0"
