"""Cognito's pre token generation trigger (V3_0): the tenant claim comes from the app client an
administrator bound to a tenant, never from what the client sends."""

from __future__ import annotations

import copy

import boto3
import pytest
from botocore.stub import Stubber

from ehr import names
from ehr.security.cognito_claims import (
    BOUND,
    CLIENT_CREDENTIALS,
    NOT_CLIENT_CREDENTIALS,
    UNBOUND_CLIENT,
    ClientLookupError,
    CognitoAppClients,
    FakeAppClients,
    TenantBindings,
    TokenCustomizer,
    build_token_customizer,
    tenant_of_client_name,
)
from ehr.settings import TokenCustomizerSettings
from tests.conftest import load_event

EVENT = "cognito_pre_token_generation_v3_client_credentials.json"
POOL = "eu-west-1_EXAMPLE"
CLIENT = "1example23456789"  # the client id of the recorded event
CLAIM = names.DEFAULT_TENANT_CLAIM


def m2m_event(**changes) -> dict:
    event = copy.deepcopy(load_event(EVENT))
    event.update(changes)
    return event


def customizer(
    clients: dict[str, str], *, ttl: float = 300, clock=None
) -> tuple[TokenCustomizer, FakeAppClients]:
    directory = FakeAppClients({(POOL, client_id): name for client_id, name in clients.items()})
    bindings = TenantBindings(directory, ttl_seconds=ttl, **({"clock": clock} if clock else {}))
    return TokenCustomizer(bindings, tenant_claim=CLAIM), directory


def added(event: dict) -> dict:
    return event["response"]["claimsAndScopeOverrideDetails"]["accessTokenGeneration"].get(
        "claimsToAddOrOverride", {}
    )


def suppressed(event: dict) -> list:
    return event["response"]["claimsAndScopeOverrideDetails"]["accessTokenGeneration"].get(
        "claimsToSuppress", []
    )


# --- the decision -------------------------------------------------------------------------------


def test_a_bound_client_gets_its_tenant_in_the_access_token():
    # Given the app client that authenticated is named for clinic-a
    customize, _ = customizer({CLIENT: names.cognito_tenant_client_name("clinic-a", "acme-lab-feed")})
    event = m2m_event()
    # When Cognito asks before issuing its access token
    decision = customize(event)
    # Then the V3 response adds the tenant claim to the access token, and nothing else
    assert event["response"] == {
        "claimsAndScopeOverrideDetails": {
            "accessTokenGeneration": {"claimsToAddOrOverride": {CLAIM: "clinic-a"}}
        }
    }
    assert (decision.tenant, decision.reason, decision.client_id) == ("clinic-a", BOUND, CLIENT)


def test_the_configured_claim_name_is_used():
    directory = FakeAppClients({(POOL, CLIENT): "tenant.clinic-b"})
    customize = TokenCustomizer(TenantBindings(directory), tenant_claim="facility")
    event = m2m_event()
    customize(event)
    assert added(event) == {"facility": "clinic-b"}


@pytest.mark.parametrize(
    "name",
    [
        names.COGNITO_SYSTEM_CLIENT_NAME,  # the stack's own client
        "tenant-clinic-a",  # a hyphen is part of tenant ids: it cannot separate
        "tenant-clinic-a-lab",
        "Tenant.clinic-a",
        "TENANT.clinic-a",
        "tenant.Clinic-A",
        "tenant.",
        "tenant..lab",
        "tenant.clinic-a.",
        "tenant.clinic-a. ",
        " tenant.clinic-a",
        "tenant.clinic-a ",
        "tenant.clinic_a",
        "tenant.-clinic-a",
        "tenant.clinic a",
        "clinic-a",
        "x.tenant.clinic-a",
        "",
    ],
)
def test_a_client_whose_name_binds_no_tenant_gets_no_tenant_claim(name):
    customize, _ = customizer({CLIENT: name})
    event = m2m_event()
    decision = customize(event)
    assert added(event) == {}
    assert suppressed(event) == [CLAIM]
    assert (decision.tenant, decision.reason) == (None, UNBOUND_CLIENT)


def test_an_unknown_client_gets_no_tenant_claim():
    customize, directory = customizer({"another-client": "tenant.clinic-a"})
    event = m2m_event()
    assert customize(event).tenant is None
    assert suppressed(event) == [CLAIM] and added(event) == {}
    assert directory.lookups == [(POOL, CLIENT)]


def test_the_pool_in_the_event_is_the_one_asked():
    # The same client id in another pool binds nothing here: the lookup is per pool.
    customize, directory = customizer({CLIENT: "tenant.clinic-a"})
    event = m2m_event(userPoolId="eu-west-1_OTHER")
    assert customize(event).tenant is None
    assert directory.lookups == [("eu-west-1_OTHER", CLIENT)]


@pytest.mark.parametrize(
    "metadata",
    [
        {"tenant": "clinic-b"},
        {CLAIM: "clinic-b", "tenantId": "clinic-b", "client_name": "tenant.clinic-b"},
        {"claimsToAddOrOverride": '{"tenant": "clinic-b"}'},
    ],
)
def test_client_metadata_and_requested_scopes_are_ignored(metadata):
    # Given a bound client and an unbound one, both sending a tenant of their choosing
    customize, _ = customizer({CLIENT: "tenant.clinic-a", "unbound": "partner-x"})
    bound = m2m_event()
    bound["request"]["clientMetadata"] = metadata
    bound["request"]["scopes"].append("system/clinic-b")
    unbound = m2m_event(callerContext={"awsSdkVersion": "aws-sdk-unknown-unknown", "clientId": "unbound"})
    unbound["request"]["clientMetadata"] = metadata
    # When Cognito asks for both
    customize(bound)
    customize(unbound)
    # Then only the administrator's binding counts
    assert added(bound) == {CLAIM: "clinic-a"}
    assert added(unbound) == {} and suppressed(unbound) == [CLAIM]


@pytest.mark.parametrize(
    "trigger",
    [
        "TokenGeneration_Authentication",
        "TokenGeneration_HostedAuth",
        "TokenGeneration_RefreshTokens",
        "TokenGeneration_NewPasswordChallenge",
        "TokenGeneration_AuthenticateDevice",
        None,
    ],
)
def test_user_sign_ins_get_no_tenant_even_through_a_bound_client(trigger):
    customize, directory = customizer({CLIENT: "tenant.clinic-a"})
    event = m2m_event(triggerSource=trigger)
    decision = customize(event)
    assert (decision.tenant, decision.reason) == (None, NOT_CLIENT_CREDENTIALS)
    assert suppressed(event) == [CLAIM]
    assert directory.lookups == []


@pytest.mark.parametrize("caller", [None, {}, {"clientId": ""}, {"clientId": 42}, "1example23456789"])
def test_an_event_without_a_client_gets_no_tenant(caller):
    customize, directory = customizer({CLIENT: "tenant.clinic-a"})
    event = m2m_event(callerContext=caller)
    assert customize(event).tenant is None
    assert suppressed(event) == [CLAIM] and directory.lookups == []


def test_a_failed_lookup_refuses_the_token_instead_of_guessing():
    customize, directory = customizer({CLIENT: "tenant.clinic-a"})
    directory.failure = "TooManyRequestsException"
    event = m2m_event()
    with pytest.raises(ClientLookupError) as caught:
        customize(event)
    assert caught.value.client_id == CLIENT
    assert event["response"] == {"claimsAndScopeOverrideDetails": None}  # nothing decided


# --- the cache ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_binding_is_looked_up_once_per_client_while_cached():
    clock = Clock()
    customize, directory = customizer(
        {CLIENT: "tenant.clinic-a", "unbound": "partner-x"}, ttl=300, clock=clock
    )
    unbound = {"awsSdkVersion": "x", "clientId": "unbound"}
    for _ in range(3):
        assert customize(m2m_event()).tenant == "clinic-a"
        assert customize(m2m_event(callerContext=unbound)).tenant is None  # "no tenant" is cached too
    assert directory.lookups == [(POOL, CLIENT), (POOL, "unbound")]


def test_a_rebound_client_takes_effect_when_the_cache_expires():
    clock = Clock()
    customize, directory = customizer({CLIENT: "tenant.clinic-a"}, ttl=300, clock=clock)
    assert customize(m2m_event()).tenant == "clinic-a"
    directory.clients[(POOL, CLIENT)] = "partner-offboarded"
    clock.now += 299
    assert customize(m2m_event()).tenant == "clinic-a"
    clock.now += 2
    assert customize(m2m_event()).tenant is None
    assert len(directory.lookups) == 2


def test_failures_are_not_cached_and_a_zero_ttl_asks_every_time():
    customize, directory = customizer({CLIENT: "tenant.clinic-a"}, ttl=0)
    directory.failure = "InternalErrorException"
    with pytest.raises(ClientLookupError):
        customize(m2m_event())
    directory.failure = None
    assert customize(m2m_event()).tenant == "clinic-a"
    assert customize(m2m_event()).tenant == "clinic-a"
    assert len(directory.lookups) == 3


def test_the_cache_stays_bounded():
    directory = FakeAppClients({(POOL, f"c{i}"): "tenant.clinic-a" for i in range(10)})
    bindings = TenantBindings(directory, max_entries=4)
    for i in range(10):
        assert bindings.tenant_for(POOL, f"c{i}") == "clinic-a"
    assert len(bindings._cache) <= 4


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", [t for t, _, _ in names.DEMO_TENANTS])
@pytest.mark.parametrize("label", [None, "acme-lab", "lab.orders", "feed 2"])
def test_the_onboarding_name_binds_exactly_its_tenant(tenant, label):
    assert tenant_of_client_name(names.cognito_tenant_client_name(tenant, label)) == tenant


def test_the_stack_system_client_binds_no_tenant():
    assert tenant_of_client_name(names.COGNITO_SYSTEM_CLIENT_NAME) is None


# --- the Cognito adapter (botocore's Stubber: no network) -------------------------------------------


@pytest.fixture
def cognito():
    client = boto3.client(
        "cognito-idp", region_name="eu-west-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    with Stubber(client) as stubber:
        yield client, stubber


def test_the_adapter_reads_only_the_client_name(cognito):
    client, stubber = cognito
    stubber.add_response(
        "describe_user_pool_client",
        {
            "UserPoolClient": {
                "UserPoolId": POOL,
                "ClientId": CLIENT,
                "ClientName": "tenant.clinic-a.acme",
                "ClientSecret": "never-kept-anywhere-by-the-adapter",
            }
        },
        {"UserPoolId": POOL, "ClientId": CLIENT},
    )
    assert CognitoAppClients(client).client_name(POOL, CLIENT) == "tenant.clinic-a.acme"


def test_the_adapter_says_none_for_a_client_the_pool_does_not_have(cognito):
    client, stubber = cognito
    stubber.add_client_error("describe_user_pool_client", "ResourceNotFoundException", http_status_code=400)
    assert CognitoAppClients(client).client_name(POOL, CLIENT) is None


@pytest.mark.parametrize(
    "code", ["TooManyRequestsException", "NotAuthorizedException", "InternalErrorException"]
)
def test_the_adapter_reports_what_it_could_not_find_out(cognito, code):
    client, stubber = cognito
    stubber.add_client_error("describe_user_pool_client", code, http_status_code=400)
    with pytest.raises(ClientLookupError) as caught:
        CognitoAppClients(client).client_name(POOL, CLIENT)
    assert caught.value.reason == code and CLIENT in str(caught.value)


def test_build_from_settings_uses_the_claim_and_cache_settings():
    settings = TokenCustomizerSettings(tenant_claim="facility", client_cache_seconds=0)
    directory = FakeAppClients({(POOL, CLIENT): "tenant.clinic-a"})
    customize = build_token_customizer(settings, directory=directory)
    event = m2m_event()
    customize(event)
    customize(m2m_event())
    assert added(event) == {"facility": "clinic-a"}
    assert len(directory.lookups) == 2
    assert m2m_event()["triggerSource"] == CLIENT_CREDENTIALS
