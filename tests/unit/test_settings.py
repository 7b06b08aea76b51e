"""Function settings: readable errors at cold start, one place for the variable names."""

from __future__ import annotations

import pytest

from ehr.settings import AuthSettings, FhirApiSettings, SettingsError, environment_for, load_settings


def test_a_missing_variable_is_named_in_the_error(monkeypatch):
    monkeypatch.setenv("EHR_ISSUER", "urn:x")
    monkeypatch.setenv("EHR_JWKS_URL", "https://idp/jwks")
    monkeypatch.delenv("EHR_RECORDS_TABLE", raising=False)
    monkeypatch.delenv("EHR_AUDIT_TABLE", raising=False)
    with pytest.raises(SettingsError) as caught:
        load_settings(FhirApiSettings)
    assert "EHR_RECORDS_TABLE" in str(caught.value)
    assert "EHR_AUDIT_TABLE" in str(caught.value)


def test_exactly_one_key_source_is_required(monkeypatch):
    for name in ("EHR_JWKS_URL", "EHR_JWKS_JSON"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EHR_ISSUER", "urn:x")
    with pytest.raises(SettingsError) as caught:
        load_settings(AuthSettings)
    assert "EHR_JWKS_URL" in str(caught.value)


def test_an_inline_jwks_must_hold_keys(monkeypatch):
    monkeypatch.setenv("EHR_ISSUER", "urn:x")
    monkeypatch.setenv("EHR_JWKS_JSON", '{"keys": []}')
    monkeypatch.delenv("EHR_JWKS_URL", raising=False)
    with pytest.raises(SettingsError, match="no keys"):
        load_settings(AuthSettings)


def test_environment_for_names_the_variables_and_drops_nones():
    env = environment_for(FhirApiSettings, records_table="t1", audit_table="t2", jwks_url=None)
    assert env == {"EHR_RECORDS_TABLE": "t1", "EHR_AUDIT_TABLE": "t2"}


def test_environment_for_refuses_unknown_settings():
    with pytest.raises(KeyError):
        environment_for(AuthSettings, records_table="t1")  # not a setting of the authorizer
