"""The local stand-in for API Gateway matches routes the way API Gateway does."""

from __future__ import annotations

from ehr.api.routes import ROUTES, Route
from infra.local.gateway import RouteTable


def test_every_route_matches_its_own_concrete_path():
    table = RouteTable()
    for route in ROUTES:
        concrete = route.path.replace("{tenant}", "clinic-a")
        matched = table.match(route.method, concrete)
        assert matched is not None, route.path
        assert matched[0] == route


def test_static_segments_win_over_path_variables():
    routes = (
        Route("GET", "/tenants/{tenant}/fhir/{type}", "fhir_api", "search", "s"),
        Route("GET", "/tenants/{tenant}/fhir/metadata", "fhir_api", "meta", "m"),
    )
    route, params = RouteTable(routes).match("GET", "/tenants/t1/fhir/metadata")
    assert route.operation_id == "meta"
    route, params = RouteTable(routes).match("GET", "/tenants/t1/fhir/Patient")
    assert (route.operation_id, params) == ("search", {"tenant": "t1", "type": "Patient"})


def test_unknown_paths_and_methods_do_not_match():
    table = RouteTable()
    assert table.match("GET", "/tenants/a/fhir/Patient/1/_history/2/extra") is None
    assert table.match("DELETE", "/tenants/a/fhir/metadata") is None
    assert table.match("GET", "/") is None


def test_path_parameters_are_url_decoded():
    _, params = RouteTable().match("GET", "/tenants/clinic%2Da/fhir/metadata")
    assert params == {"tenant": "clinic-a"}
