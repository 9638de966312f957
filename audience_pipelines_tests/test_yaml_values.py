"""Text settings load as the text written in YAML, quoted or not (issue 6, item 4).

YAML 1.1 reads a plain `0042` as the octal int 34 and `4242` as an int; Dagster's jinja rendering turns
the quoted "4242" into an int too. Ids, names, tables and URLs must load as written all the same.
"""

from __future__ import annotations

import dagster as dg
import pytest
from dagster_shared.yaml_utils import parse_yamls_with_source_position
from pydantic import TypeAdapter

from audience_pipelines.components import Destination
from audience_pipelines.components.yaml_text import written_text
from audience_pipelines.config import text_settings
from audience_pipelines.contract import EnvSecret
from audience_pipelines.destinations import destination_types
from audience_pipelines_tests.dagster_helpers import project_defs
from audience_pipelines_tests.test_config_errors import load_error

DESTINATION = """type: audience_pipelines.components.Destination
attributes:
  name: {name}
  type: {type}
  settings: {settings}
  from_env: {from_env}
"""
META_ENV = "{access_token: META_TOKEN_FOR_TEST}"


def destination(name: str, type_name: str, settings: str, from_env: str = "{}") -> str:
    return DESTINATION.format(name=name, type=type_name, settings=settings, from_env=from_env)


def loaded_settings(defs: dg.Definitions, name: str) -> dict:
    """The settings as validated at load: given values, secrets from the environment left out."""
    settings = defs.resources[f"destination_{name}"].settings
    out = {}
    for key in settings.model_fields_set:
        value = getattr(settings, key)
        if isinstance(value, EnvSecret):
            if value.var:
                continue
            value = value.value()
        out[key] = value
    return out


def test_every_destination_type_has_text_settings_known():
    # The settings this fix covers, per type; a new text setting is covered without a change here.
    assert text_settings("meta_custom_audiences") >= {"ad_account_id", "base_url"}
    assert text_settings("sql_table") == {"url", "table", "db_schema"}
    assert text_settings("webhook") >= {"url"}
    assert text_settings("file") == {"path"}
    assert "timeout_s" not in text_settings("webhook") and "batch_size" not in text_settings("meta_custom_audiences")


@pytest.mark.parametrize(("type_name", "setting"), sorted(
    (t, k) for t in destination_types() for k in text_settings(t)))
@pytest.mark.parametrize("written", ["0042", "'0042'", '"4242"', "4242", "1.50"])
def test_every_text_setting_of_every_destination_type_loads_as_written(tmp_path, type_name, setting, written):
    path = tmp_path / "defs.yaml"
    path.write_text(f"type: audience_pipelines.components.Destination\nattributes:\n  name: d\n  type: {type_name}\n"
                    f"  settings:\n    {setting}: {written}\n")
    parsed = parse_yamls_with_source_position(path.read_text(), str(path))[0]
    model = TypeAdapter(Destination.model()).validate_python(parsed.value["attributes"])
    context = dg.ResolutionContext.default(parsed.source_position_tree).at_path("attributes")
    component = Destination.resolve_from_model(context, model)
    assert component.settings == {setting: written.strip("'\"")}


def test_numeric_ids_and_names_load_as_written(home):
    docs = [
        destination("meta_quoted", "meta_custom_audiences", '{ad_account_id: "4242"}', META_ENV),
        destination("meta_plain", "meta_custom_audiences", "{ad_account_id: 4242}", META_ENV),
        destination("meta_zeros_quoted", "meta_custom_audiences", "{ad_account_id: '0042'}", META_ENV),
        destination("meta_zeros_plain", "meta_custom_audiences",
                    "{ad_account_id: 0042, timeout_s: 15, batch_size: 500}", META_ENV),
        destination("meta_block", "meta_custom_audiences",
                    "\n    ad_account_id: 00123\n    base_url: 12:30\n    timeout_s: 2.5", META_ENV),
        destination("table_quoted", "sql_table", '{url: "duckdb:///{data_dir}/t.duckdb", table: "2024"}'),
        destination("table_plain", "sql_table",
                    '{url: "duckdb:///{data_dir}/t.duckdb", table: 2024, db_schema: 0012}'),
        destination("table_no_schema", "sql_table",
                    '{url: "duckdb:///{data_dir}/t.duckdb", table: t, db_schema: null}'),
        destination("hook_plain", "webhook", "{url: 8080, timeout_s: 5, batch_size: 10}"),
        destination("hook_quoted", "webhook", '{url: "1e5"}'),
        destination("files", "file", "{path: 0755, format: csv}"),
        destination("looks_typed", "sql_table", '{url: "0x10", table: "True", db_schema: 1_000}'),
        destination("yaml_bool", "sql_table", "{url: '1.0', table: yes, db_schema: 1.50}"),
    ]
    with project_defs(extra={"extra/defs.yaml": "---\n".join(docs)}) as defs:
        assert loaded_settings(defs, "meta_quoted") == {"ad_account_id": "4242"}
        assert loaded_settings(defs, "meta_plain") == {"ad_account_id": "4242"}
        assert loaded_settings(defs, "meta_zeros_quoted") == {"ad_account_id": "0042"}
        zeros = loaded_settings(defs, "meta_zeros_plain")
        assert zeros == {"ad_account_id": "0042", "timeout_s": 15, "batch_size": 500}
        assert type(zeros["timeout_s"]) is float and type(zeros["batch_size"]) is int  # validated to its type
        assert loaded_settings(defs, "meta_block") == {"ad_account_id": "00123", "base_url": "12:30", "timeout_s": 2.5}
        assert loaded_settings(defs, "table_quoted") == {"url": "duckdb:///{data_dir}/t.duckdb", "table": "2024"}
        assert loaded_settings(defs, "table_plain") == {
            "url": "duckdb:///{data_dir}/t.duckdb", "table": "2024", "db_schema": "0012"}
        assert loaded_settings(defs, "table_no_schema")["db_schema"] is None
        assert loaded_settings(defs, "hook_plain") == {"url": "8080", "timeout_s": 5, "batch_size": 10}
        assert loaded_settings(defs, "hook_quoted") == {"url": "1e5"}
        assert loaded_settings(defs, "files") == {"path": "0755", "format": "csv"}
        assert loaded_settings(defs, "looks_typed") == {"url": "0x10", "table": "True", "db_schema": "1_000"}
        assert loaded_settings(defs, "yaml_bool") == {"url": "1.0", "table": "yes", "db_schema": "1.50"}

        # The settings a run builds the destination from are the same text ({data_dir} still filled in).
        meta = defs.resources["destination_meta_zeros_plain"].open(home, environ={"META_TOKEN_FOR_TEST": "t"})
        assert meta.settings.ad_account_id == "0042"
        built = defs.resources["destination_table_plain"].open(home, environ={})
        try:
            assert built.settings.table == "2024" and built.settings.url.value() == f"duckdb:///{home}/t.duckdb"
        finally:
            built.close()


def test_anchors_and_merge_keys_load_as_written(home):
    doc = """type: audience_pipelines.components.Destination
attributes:
  name: merged
  type: meta_custom_audiences
  from_env: {access_token: META_TOKEN_FOR_TEST}
  settings:
    <<: {ad_account_id: &id 0042}
    base_url: *id
"""
    with project_defs(extra={"extra/defs.yaml": doc}) as defs:
        assert loaded_settings(defs, "merged") == {"ad_account_id": "0042", "base_url": "0042"}


def test_templates_keep_working_and_render_as_text(home, monkeypatch):
    monkeypatch.setenv("META_ACCOUNT_FOR_TEST", "4242")
    monkeypatch.setenv("META_ZEROS_FOR_TEST", "0042")
    monkeypatch.setenv("TIMEOUT_FOR_TEST", "12")
    docs = [
        destination("from_template", "meta_custom_audiences",
                    '{ad_account_id: "{{ env.META_ACCOUNT_FOR_TEST }}", timeout_s: "{{ env.TIMEOUT_FOR_TEST }}"}',
                    META_ENV),
        destination("zeros_template", "meta_custom_audiences", '{ad_account_id: "{{ env.META_ZEROS_FOR_TEST }}"}',
                    META_ENV),
        destination("unset_template", "sql_table",
                    '{url: "duckdb:///{data_dir}/t.duckdb", table: t, db_schema: "{{ env.UNSET_FOR_TEST }}"}'),
        destination("joined_template", "meta_custom_audiences",
                    '{ad_account_id: "act_{{ env.META_ACCOUNT_FOR_TEST }}", base_url: "{{ 40 + 2 }}"}', META_ENV),
    ]
    monkeypatch.delenv("UNSET_FOR_TEST", raising=False)
    with project_defs(extra={"extra/defs.yaml": "---\n".join(docs)}) as defs:
        rendered = loaded_settings(defs, "from_template")
        assert rendered == {"ad_account_id": "4242", "timeout_s": 12}  # a non-text setting keeps jinja's value
        assert loaded_settings(defs, "zeros_template") == {"ad_account_id": "0042"}
        assert loaded_settings(defs, "unset_template")["db_schema"] is None  # as Dagster renders it
        assert loaded_settings(defs, "joined_template") == {"ad_account_id": "act_4242", "base_url": "42"}


SYNC = """type: audience_pipelines.components.AudienceSync
attributes:
  name: {name}
  audience: high_value_customers
  destination: exports
  target: {target}
  identifiers: {{email: email}}
"""


def test_sync_target_id_loads_as_written(home):
    docs = [SYNC.format(name="id_octal_looking", target="{id: 0123}"),
            SYNC.format(name="id_quoted", target='{id: "123"}'),
            SYNC.format(name="id_plain", target="{id: 456}"),
            SYNC.format(name="name_numeric", target="{name: 2024}")]
    with project_defs(extra={"extra/defs.yaml": "---\n".join(docs)}) as defs:
        def description(name: str) -> str:
            return next(iter(defs.resolve_assets_def(dg.AssetKey(["syncs", name])).specs)).description

        assert "- target: destination audience id 0123\n" in description("id_octal_looking")
        assert "- target: destination audience id 123\n" in description("id_quoted")
        assert "- target: destination audience id 456\n" in description("id_plain")
        assert "- target: destination audience name '2024'\n" in description("name_numeric")


def test_other_text_fields_load_as_written(home):
    doc = """type: audience_pipelines.components.Audience
attributes:
  name: numbered
  entity: customers
  description: 0042
  filter: "True"
"""
    with project_defs(extra={"extra/defs.yaml": doc}) as defs:
        spec = next(iter(defs.resolve_assets_def(dg.AssetKey(["audiences", "numbered"])).specs))
    assert spec.description.startswith("0042\n") and "WHERE True\n" in spec.description


def test_invalid_values_still_name_file_document_and_key(home):
    ok = destination("fine", "file", "{path: /tmp/x}")
    message = load_error(extra={"extra/defs.yaml": ok + "---\n" + destination(
        "meta_bad", "meta_custom_audiences", "{ad_account_id: [4242], batch_size: 0}", META_ENV)})
    assert "extra/defs.yaml (document 2)" in message and "destination 'meta_bad'" in message
    assert "'ad_account_id': Input should be a valid string" in message
    assert "'batch_size'" in message

    message = load_error(extra={"extra/defs.yaml": destination(
        "meta_null", "meta_custom_audiences", "{ad_account_id: null}", META_ENV)})
    assert "extra/defs.yaml (document 1)" in message and "'ad_account_id'" in message

    message = load_error(extra={"extra/defs.yaml": destination("typo", "file", "{path: 0755, fromat: 1}")})
    assert "destination 'typo'" in message and "fromat" in message


def test_written_text_refuses_a_value_the_file_no_longer_holds(tmp_path):
    path = tmp_path / "defs.yaml"
    path.write_text("attributes:\n  settings: {ad_account_id: 0042}\n")
    tree = parse_yamls_with_source_position(path.read_text(), str(path))[0].source_position_tree
    context = dg.ResolutionContext.default(tree).at_path("attributes").at_path("settings").at_path("ad_account_id")
    assert written_text(context, 34) == "0042"
    assert written_text(context, 42) is None  # not what YAML read there
    path.write_text("attributes:\n  settings: {ad_account_id: 0043}\n")  # edited since Dagster parsed it
    assert written_text(context, 34) is None
    assert written_text(dg.ResolutionContext.default(None).at_path("x"), 34) is None


@pytest.mark.parametrize("text", ["0042", "4242", "1_000", "12:30", "1.50", ".inf", "yes", "Off"])
def test_written_text_for_each_yaml_typed_scalar(tmp_path, text):
    path = tmp_path / "defs.yaml"
    path.write_text(f"a: x\n---\nattributes:\n  list: [1, {text}]\n")
    parsed = parse_yamls_with_source_position(path.read_text(), str(path))[1]
    context = dg.ResolutionContext.default(parsed.source_position_tree).at_path("attributes").at_path("list").at_path(1)
    assert written_text(context, parsed.value["attributes"]["list"][1]) == text
