"""Flashduty's contract, in one module that the bridge and ``emulate`` both use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bridge import contract
from bridge.contract import Rejection


def test_production_code_does_not_import_the_test_emulator() -> None:
    """The bridge's modules learn the contract from bridge.contract, never from bridge.emulate."""
    modules = ["bridge.app", "bridge.runtime", "bridge.preview", "bridge.sources.standard", "bridge.mapping"]
    probe = f"import sys, {', '.join(modules)}; print('bridge.emulate' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_emulate_and_limits_take_their_numbers_from_the_contract() -> None:
    """No second copy of a limit or code table: emulate and limits re-export the contract's objects."""
    from bridge import emulate, limits

    assert emulate.STATUS_BY_CODE is contract.STATUS_BY_CODE
    assert emulate.PUSH_PATH == contract.PUSH_PATH
    assert limits.LABEL_KEY is contract.LABEL_KEY
    assert not any(name.endswith("_MAX") for name in vars(limits))
    assert not any(name.endswith("_MAX") for name in vars(emulate))


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        'application/json; charset="utf8"',
    ],
)
def test_json_with_no_or_a_utf8_charset_is_the_accepted_content_type(content_type: str) -> None:
    contract.check_content_type(content_type)


@pytest.mark.parametrize(
    ("content_type", "fragment"),
    [
        ("", 'Content-Type "" is not supported'),
        ("text/plain", "use application/json"),
        ("application/x-www-form-urlencoded", "use application/json"),
        ("application/jsonx", "use application/json"),
        ("application/json; charset=latin-1", 'charset "latin-1" is not supported'),
        ("application/json; charset=utf-16", 'charset "utf-16" is not supported'),
    ],
)
def test_other_content_types_and_charsets_are_400_invalid_content_type(content_type: str, fragment: str) -> None:
    with pytest.raises(Rejection) as caught:
        contract.check_content_type(content_type)
    assert (caught.value.code, caught.value.status) == ("InvalidContentType", 400)
    assert fragment in caught.value.message


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_methods_other_than_post_are_400_method_not_allowed(method: str) -> None:
    with pytest.raises(Rejection) as caught:
        contract.check_method(method)
    assert (caught.value.code, caught.value.status) == ("MethodNotAllowed", 400)


def test_wrong_key_answer_is_the_specs_400_invalid_parameter() -> None:
    """The spec's example: a bad key is 400 InvalidParameter "integration_key is not a valid one"."""
    rejection = contract.wrong_key()
    assert (rejection.status, rejection.code, rejection.message) == (
        400,
        "InvalidParameter",
        "integration_key is not a valid one",
    )
    assert contract.is_wrong_key("InvalidParameter", "integration_key is not a valid one")
    assert not contract.is_wrong_key("InvalidParameter", "title_rule: required")
    assert not contract.is_wrong_key("Unauthorized", "integration_key is not a valid one")
    with pytest.raises(Rejection, match="given 2 times"):
        contract.check_integration_keys(["a", "b"])
    for given in ([], [""], ["  "]):
        with pytest.raises(Rejection, match="integration_key is not a valid one"):
            contract.check_integration_keys(given)


def test_lone_surrogates_become_replacement_characters_as_gos_decoder_makes_them() -> None:
    body = contract.parse_body(b'{"labels": {"a\\ud800": "x\\udc00y"}, "t": ["\\ud83d"]}', strict=True)
    assert body == {"labels": {"a\ufffd": "x\ufffdy"}, "t": ["\ufffd"]}


def test_without_lone_surrogates_handles_any_depth_without_recursion() -> None:
    depth = sys.getrecursionlimit() * 3
    value: object = "\ud800"
    for index in range(depth):
        value = [value] if index % 2 else {"k\udc00": value}
    cleaned = contract.without_lone_surrogates(value)
    for index in reversed(range(depth)):
        cleaned = cleaned[0] if index % 2 else cleaned["k\ufffd"]  # type: ignore[index]
    assert cleaned == "\ufffd"


def test_generated_alert_keys_are_22_base62_characters() -> None:
    keys = {contract.new_alert_key() for _ in range(50)}
    assert len(keys) == 50
    assert all(len(key) == 22 and key.isascii() and key.isalnum() for key in keys)
