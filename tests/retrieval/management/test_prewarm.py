from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from retrieval import services
from retrieval.errors import ServiceUnavailable
from tests.factories import feature_model_with_index

pytestmark = pytest.mark.django_db


def test_it_prints_every_relation_it_read_as_json_the_hnsw_index_among_them(capsys: pytest.CaptureFixture[str]) -> None:
    model = feature_model_with_index("prewarm-command")

    call_command("prewarm", json=True)

    relations = json.loads(capsys.readouterr().out)["relations"]
    assert model.hnsw_index_name in [relation["name"] for relation in relations]
    assert all(relation["blocks"] * 8192 == relation["bytes"] for relation in relations)


def test_a_server_without_pg_prewarm_is_an_error_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable() -> list[services.PrewarmedRelation]:
        raise ServiceUnavailable("pg_prewarm is not available on this PostgreSQL server: no such extension")

    monkeypatch.setattr(services, "search_working_set_prewarm", unavailable)
    with pytest.raises(CommandError, match="pg_prewarm is not available"):
        call_command("prewarm")
