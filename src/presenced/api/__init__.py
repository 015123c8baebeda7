"""Public Python API: the module's functions and the routing hook."""

from presenced.api.presence import Presence, RouteContext, install_route, load_route

__all__ = ["Presence", "RouteContext", "install_route", "load_route"]
