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
