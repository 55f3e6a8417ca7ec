"""Same seed, same image as ComfyUI 0.8.0, over HTTP (slow).

A real `python -m server --cpu` runs over a temporary base directory whose models/ folders
link to the oracle's full-size random-weight files (tests/oracle_models.py makes them once);
each case of ../shared/oracle/refs goes through the oracle's own compare.py: input uploads,
POST /prompt, /history, /view of the SaveImage PNG and the SaveLatent file, and its
thresholds (latent rel_rms <= 1e-4, PSNR >= 60 dB). The SD1.5 cases need ~4 GB of RAM and
2.9 GB of disk; g_sdxl_euler runs only when 12 GB of RAM is free.
"""
import os

import pytest

from bench import oracle_table
from oracle_models import require_oracle_model

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isdir(oracle_table.REFS), reason="oracle refs not available")]
GiB = 1 << 30


def _available_ram() -> int:
    import psutil
    return psutil.virtual_memory().available


@pytest.fixture(scope="module")
def oracle_server(tmp_path_factory):
    """URL of a comfyd server with every file the SD1.5 cases (and, RAM allowing, SDXL) need."""
    if _available_ram() < 5 * GiB:
        pytest.skip("the SD1.5 oracle cases need ~5 GB of free RAM")
    names = oracle_table.models_needed(oracle_table.SD15_CASES)
    paths = {n: require_oracle_model(n) for n in names}
    base = str(tmp_path_factory.mktemp("oracle_base"))
    oracle_table.link_models(base, paths)
    with oracle_table.running_server(base) as url:
        yield url, base


@pytest.fixture(scope="module")
def compare():
    return oracle_table.compare_module()


def _assert_pass(result):
    assert result["verdict"] == "PASS", result
    # compare.py's PASS already bounds these; the legitimate fp32 spread it documents is ~2.7e-6
    assert result["latent_rel_rms"] <= 1e-4 and result["image_psnr_db"] >= 60.0


@pytest.mark.parametrize("case", oracle_table.SD15_CASES)
def test_sd15_case_matches_comfyui(oracle_server, compare, case):
    url, _ = oracle_server
    result = oracle_table.run_cases(url, [case], compare)[case]
    print(f"{case}: rel_rms={result.get('latent_rel_rms')} psnr={result.get('image_psnr_db')} "
          f"wall={result.get('wall_s')}s")
    _assert_pass(result)


def test_sdxl_euler_matches_comfyui(oracle_server, compare):
    url, base = oracle_server
    oracle_table.free_models(url)  # the SD1.5 model must not sit beside SDXL in RAM
    if _available_ram() < oracle_table.SDXL_MIN_FREE_BYTES:
        pytest.skip("g_sdxl_euler needs >= 12 GB of free RAM")
    (name,) = oracle_table.models_needed([oracle_table.SDXL_CASE])
    oracle_table.link_models(base, {name: require_oracle_model(name)})  # skips when the disk is short
    result = oracle_table.run_cases(url, [oracle_table.SDXL_CASE], compare)[oracle_table.SDXL_CASE]
    print(f"g_sdxl_euler: rel_rms={result.get('latent_rel_rms')} psnr={result.get('image_psnr_db')}")
    _assert_pass(result)


def test_sdxl_seed_workflow_matches_comfyui(oracle_server, compare):
    """h_sdxl_seed_workflow: the seed document's graph (CLIP vision G, two unCLIPConditionings on a
    zeroed text conditioning, depth Control-LoRA, dpmpp_3m_sde_gpu/karras) at 256x192, 4 steps."""
    url, base = oracle_server
    oracle_table.free_models(url)
    if _available_ram() < 14 * GiB:
        pytest.skip("h_sdxl_seed_workflow needs >= 14 GB of free RAM")
    case = "h_sdxl_seed_workflow"
    oracle_table.link_models(base, {n: require_oracle_model(n) for n in oracle_table.models_needed([case])})
    result = oracle_table.run_cases(url, [case], compare)[case]
    print(f"{case}: rel_rms={result.get('latent_rel_rms')} psnr={result.get('image_psnr_db')}")
    _assert_pass(result)
