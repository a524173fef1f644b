import pytest

from roofsim.specs import load_gpu, load_host, load_model


@pytest.fixture
def llama8b():
    return load_model("llama-3-8b")


@pytest.fixture
def rtx4090():
    return load_gpu("rtx4090")


@pytest.fixture
def epyc():
    return load_host("epyc-rome-milan")


@pytest.fixture(autouse=True)
def _output_is_not_a_terminal(monkeypatch):
    """The CLI's tables are 100 columns wide off a terminal unless COLUMNS says otherwise (roofsim.display); a test
    runner that exports COLUMNS (pytest-xdist's workers do) must not change what the tests read."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
def config_path(tmp_path):
    """A tiny Llama's config.json (executor.check.tiny_config) for `roofsim run --model`."""
    pytest.importorskip("transformers")
    from roofsim.executor.check import tiny_config

    path = tmp_path / "config.json"
    tiny_config("llama").to_json_file(path)
    return path
