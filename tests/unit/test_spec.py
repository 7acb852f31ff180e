"""DeploymentSpec validation and memory sizes: every error names the field and the value."""

from __future__ import annotations

import json

import pytest

from lowtide._spec import MAX_TIMEOUT_S, DeploymentSpec, SpecError, check_name, parse_memory

GI = 2**30


# ---- parse_memory ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("512Mi", 512 * 2**20),
        ("8Gi", 8 * GI),
        ("1G", 10**9),
        ("1.5Gi", 3 * 2**29),
        ("1Ti", 2**40),
        ("2K", 2000),
        ("1Ki", 1024),
        ("1gi", GI),  # unit case is forgiven
        ("100", 100),
        ("100B", 100),
        ("100b", 100),
        (" 2Gi ", 2 * GI),
        ("2 Gi", 2 * GI),
        (1024, 1024),
        (1.0, 1),
    ],
)
def test_parse_memory(value: object, expected: int) -> None:
    assert parse_memory(value) == expected


@pytest.mark.parametrize(
    "value",
    ["0", "0Gi", "-1", "-1Gi", "abc", "", "Gi", "10XB", "1GB", "1.5.2Gi", "1e9", "0x10",
     True, False, 0, -1, -0.5, None, [512], {"Mi": 512}],
)
def test_parse_memory_refuses(value: object) -> None:
    with pytest.raises(SpecError) as exc:
        parse_memory(value, key="memory")
    assert f"memory={value!r}" in str(exc.value)


@pytest.mark.parametrize("value", [
    pytest.param("0.5", id="str-half"), pytest.param("0.1B", id="str-tenth-B"),
    pytest.param(0.5, id="float-half")])
def test_parse_memory_never_returns_zero(value: object) -> None:
    with pytest.raises(SpecError):
        parse_memory(value)


def test_parse_memory_error_names_the_key() -> None:
    with pytest.raises(SpecError, match=r"^mem_limit='abc' is not a size"):
        parse_memory("abc", key="mem_limit")


# ---- names ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["a", "double", "resnet-50", "a1", "a-", "a" * 63])
def test_name_allowed(name: str) -> None:
    assert check_name(name) == name
    assert DeploymentSpec.from_dict({"name": name}).name == name


@pytest.mark.parametrize(
    "name",
    ["", "A", "Double", "1abc", "-a", "a_b", "a.b", "a b", "a/b", "../x", "..", "x/../y",
     "%2e%2e", "a" * 64, "é", None, 5, ["a"]],
)
def test_name_refused(name: object) -> None:
    with pytest.raises(SpecError, match=r"name .* is not allowed"):
        check_name(name)
    with pytest.raises(SpecError, match=r"name .* is not allowed"):
        DeploymentSpec.from_dict({"name": name})


@pytest.mark.parametrize("name", ["double\n", "a\n"])
def test_name_with_trailing_newline_refused(name: str) -> None:
    with pytest.raises(SpecError):
        check_name(name)


# ---- from_dict ------------------------------------------------------------------------
def test_from_dict_defaults_and_round_trip() -> None:
    spec = DeploymentSpec.from_dict({"name": "double"})
    assert (spec.cpu, spec.memory_bytes, spec.gpu, spec.requirements) == (1.0, GI, 0, [])
    assert (spec.min_replicas, spec.max_replicas, spec.timeout_s, spec.params) == (
        0, None, 60.0, None)
    assert DeploymentSpec.from_dict(spec.to_dict()) == spec


def test_from_dict_full_round_trip() -> None:
    data = {"name": "resnet-50", "cpu": 2.5, "memory_bytes": 8 * GI, "gpu": 1,
            "gpu_memory_bytes": 16 * GI, "requirements": ["torch>=2.1", "pillow"],
            "min_replicas": 1, "max_replicas": 4,
            "timeout_s": 120, "python": "3.11", "params": ["image", "top_k"],
            "access": "key", "models": ["resnet:v2"], "env": {"MODEL": "resnet"},
            "secrets": ["hf-token"], "packages": ["torch", "PIL"],
            "methods": {"__call__": ["image"], "top": None}}
    spec = DeploymentSpec.from_dict(data)
    assert spec.to_dict() == data


@pytest.mark.parametrize(("env", "says"), [
    ({"1X": "v"}, "not a variable name"),
    ({"LOWTIDE_REDIS_URL": "redis://evil"}, "set by lowtide itself"),
    ({"CUDA_VISIBLE_DEVICES": "0"}, "set by lowtide itself"),
    ({"K": 3}, "must be a string"),
    ([("K", "v")], "must be an object"),
    ({"K": "x" * (64 * 1024)}, "bytes: at most"),
])
def test_env_is_checked_without_echoing_values(env: object, says: str) -> None:
    with pytest.raises(SpecError, match=says) as exc:
        DeploymentSpec.from_dict({"name": "double", "env": env})
    assert "redis://evil" not in str(exc.value)


@pytest.mark.parametrize("secrets", [["Bad_Name"], "hf-token", [1]])
def test_secret_names_are_checked(secrets: object) -> None:
    with pytest.raises(SpecError, match="secret"):
        DeploymentSpec.from_dict({"name": "double", "secrets": secrets})


@pytest.mark.parametrize("packages", ["torch", ["torch>=2"], ["a"] * 33, [3]])
def test_packages_are_a_short_list_of_top_level_names(packages: object) -> None:
    with pytest.raises(SpecError, match="packages must be a list"):
        DeploymentSpec.from_dict({"name": "m", "packages": packages})


def test_from_dict_names_every_unknown_field_and_the_allowed_ones() -> None:
    with pytest.raises(SpecError) as exc:
        DeploymentSpec.from_dict({"name": "double", "memory": "1Gi", "replicas": 2})
    message = str(exc.value)
    assert "unknown field(s) memory, replicas" in message
    assert "allowed:" in message and "memory_bytes" in message and "timeout_s" in message


@pytest.mark.parametrize("data", [None, [], "double", ["name", "double"], 3])
def test_from_dict_needs_an_object(data: object) -> None:
    with pytest.raises(SpecError, match="JSON object"):
        DeploymentSpec.from_dict(data)


def test_from_dict_missing_name_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="name"):
        DeploymentSpec.from_dict({"cpu": 1})


# ---- bounds of every field ------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cpu", 0.001), ("cpu", 1), ("cpu", 512), ("cpu", 512.0),
        ("memory_bytes", 1), ("memory_bytes", 2**40),
        ("gpu", 0), ("gpu", 16),
        ("gpu_memory_bytes", 0),
        ("requirements", []), ("requirements", ["numpy", "scikit-learn>=1.3"]),
        ("requirements", ["x" * 511]),
        ("min_replicas", 0), ("min_replicas", 1000),
        ("max_replicas", None), ("max_replicas", 1), ("max_replicas", 1000),
        ("timeout_s", 0.001), ("timeout_s", 1), ("timeout_s", MAX_TIMEOUT_S),
        ("python", "3.10"), ("python", "3.12"),
        ("params", None), ("params", []), ("params", ["x", "y"]),
    ],
)
def test_field_allowed(field: str, value: object) -> None:
    spec = DeploymentSpec.from_dict({"name": "fn", field: value})
    assert getattr(spec, field) == value


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cpu", 0, "cpu=0 must be"),
        ("cpu", -1, "cpu=-1 must be"),
        ("cpu", 512.5, "cpu=512.5 must be"),
        ("cpu", float("nan"), "cpu=nan must be"),
        ("cpu", True, "cpu=True must be"),
        ("cpu", "2", "cpu='2' must be"),
        ("memory_bytes", 0, "memory=0 must be"),
        ("memory_bytes", -1, "memory=-1 must be"),
        ("memory_bytes", 1.5, "memory=1.5 must be"),
        ("memory_bytes", "1Gi", "memory='1Gi' must be"),
        ("memory_bytes", True, "memory=True must be"),
        ("gpu", -1, "gpu=-1 must be"),
        ("gpu", 17, "gpu=17 must be"),
        ("gpu", 1.0, "gpu=1.0 must be"),
        ("gpu", True, "gpu=True must be"),
        ("gpu_memory_bytes", -1, "gpu_memory=-1 must be a number of bytes"),
        ("gpu_memory_bytes", "8Gi", "gpu_memory='8Gi' must be a number of bytes"),
        ("gpu_memory_bytes", 1.5, "gpu_memory=1.5 must be"),
        ("gpu_memory_bytes", True, "gpu_memory=True must be"),
        ("gpu_memory_bytes", GI, "gpu_memory=1073741824 needs gpu >= 1"),
        ("requirements", "numpy", "requirements must be a list"),
        ("requirements", [""], "requirements must be a list"),
        ("requirements", ["  "], "requirements must be a list"),
        ("requirements", [3], "requirements must be a list"),
        ("requirements", ["x" * 512], "requirements must be a list"),
        ("min_replicas", -1, "min_replicas=-1 must be"),
        ("min_replicas", 1001, "min_replicas=1001 must be"),
        ("min_replicas", 1.0, "min_replicas=1.0 must be"),
        ("min_replicas", True, "min_replicas=True must be"),
        ("max_replicas", 0, "max_replicas=0 must be"),
        ("max_replicas", 1001, "max_replicas=1001 must be"),
        ("max_replicas", 2.0, "max_replicas=2.0 must be"),
        ("max_replicas", True, "max_replicas=True must be"),
        ("timeout_s", 0, "timeout=0 must be"),
        ("timeout_s", -5, "timeout=-5 must be"),
        ("timeout_s", MAX_TIMEOUT_S + 1, "timeout=3601.0 must be"),
        ("timeout_s", float("inf"), "timeout=inf must be"),
        ("timeout_s", False, "timeout=False must be"),
        ("python", "3", "python='3' must look like"),
        ("python", "3.11.2", "python='3.11.2' must look like"),
        ("python", 3.11, "python=3.11 must look like"),
        ("params", "x", "params must be a list"),
        ("params", ["x", 1], "params must be a list"),
    ],
)
def test_field_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        DeploymentSpec.from_dict({"name": "fn", field: value})
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("min_replicas", "max_replicas", "ok"),
    [(0, 1, True), (2, 2, True), (2, 5, True), (3, 2, False), (1, 0, False)],
)
def test_max_replicas_not_below_min(min_replicas: int, max_replicas: int, ok: bool) -> None:
    data = {"name": "fn", "min_replicas": min_replicas, "max_replicas": max_replicas}
    if ok:
        assert DeploymentSpec.from_dict(data).max_replicas == max_replicas
    else:
        with pytest.raises(SpecError, match=rf"max_replicas={max_replicas} must be"):
            DeploymentSpec.from_dict(data)


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)  # callers that catch ValueError keep working


@pytest.mark.parametrize(("gpu", "gpu_memory"), [(1, 1), (1, 80 * GI), (8, 16 * GI)])
def test_gpu_memory_with_gpus(gpu: int, gpu_memory: int) -> None:
    spec = DeploymentSpec.from_dict({"name": "fn", "gpu": gpu, "gpu_memory_bytes": gpu_memory})
    assert (spec.gpu, spec.gpu_memory_bytes) == (gpu, gpu_memory)


def test_an_older_client_spec_has_no_gpu_memory() -> None:
    assert DeploymentSpec.from_dict({"name": "fn", "gpu": 1}).gpu_memory_bytes == 0


# ---- deploy(): resources refused before any upload, sizes parsed --------------------------
def _captured_deploy(**resources: object) -> dict[str, object]:
    """Deploy through an in-memory transport; return the spec the platform would get."""
    import httpx

    from lowtide.sdk import Client

    sent: dict[str, object] = {}

    def platform(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/blobs/missing":  # the platform has every blob
            return httpx.Response(200, json={"missing": [], "max_blob_bytes": 2**30})
        body = request.read()
        start = body.index(b'{"name"')
        sent.update(json.loads(body[start: body.index(b"\r\n", start)]))
        return httpx.Response(201, json={"name": "fn", "url": "http://x/fn/fn", "version": 1})

    client = Client("http://platform.invalid", "http://activator.invalid", "token")
    client._http = httpx.Client(transport=httpx.MockTransport(platform))
    client.deploy(lambda x: x, name="fn", **resources)  # type: ignore[arg-type]
    return sent


def test_deploy_sends_resources_in_bytes() -> None:
    spec = _captured_deploy(cpu=2, memory="512Mi", gpu=1, gpu_memory="8Gi")
    assert (spec["cpu"], spec["memory_bytes"], spec["gpu"], spec["gpu_memory_bytes"]) == (
        2, 512 * 2**20, 1, 8 * GI)
    assert _captured_deploy(memory=3 * GI, gpu=2, gpu_memory=GI)["gpu_memory_bytes"] == GI
    assert _captured_deploy()["gpu_memory_bytes"] == 0


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"memory": "lots"}, "memory='lots' is not a size"),
        ({"memory": 0}, "memory=0 must be at least one byte"),
        ({"gpu": 1, "gpu_memory": "8 gigs"}, "gpu_memory='8 gigs' is not a size"),
        ({"gpu_memory": "8Gi"}, "needs gpu >= 1"),
        ({"gpu": -1}, "gpu=-1 must be a whole number of GPUs"),
        ({"gpu": 0.5}, "gpu=0.5 must be a whole number of GPUs"),
        ({"cpu": 0}, "cpu=0 must be a number of cores"),
    ],
)
def test_deploy_refuses_bad_resources_before_uploading(resources: dict[str, object],
                                                       message: str) -> None:
    from lowtide.sdk import Client, DeployError

    client = Client("http://platform.invalid", "http://activator.invalid", "token")
    with pytest.raises(DeployError) as exc:  # .invalid: an upload attempt would fail otherwise
        client.deploy(lambda x: x, name="fn", **resources)  # type: ignore[arg-type]
    assert message in str(exc.value)
