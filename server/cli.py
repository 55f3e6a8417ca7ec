"""The command line: ComfyUI's flags, as `python -m server` and `python main.py` accept them."""
from __future__ import annotations

import argparse

PREVIEW_METHODS = ["none", "auto", "latent2rgb", "taesd"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="comfyd", description="ComfyUI-compatible image generation server")
    add = p.add_argument
    # network
    add("--listen", type=str, default="127.0.0.1", metavar="IP", nargs="?", const="0.0.0.0,::",
        help="address(es) to listen on, comma separated; bare --listen = all interfaces")
    add("--port", type=int, default=8188)
    add("--tls-keyfile", type=str)
    add("--tls-certfile", type=str)
    add("--enable-cors-header", type=str, default=None, metavar="ORIGIN", nargs="?", const="*")
    add("--max-upload-size", type=float, default=None, help="maximum request body in MB (default 100)")
    add("--enable-compress-response-body", action="store_true")
    add("--disable-api-nodes", action="store_true")
    add("--multi-user", action="store_true")
    # folders
    add("--base-directory", type=str, default=None)
    add("--extra-model-paths-config", type=str, default=None, metavar="PATH", nargs="+", action="append")
    add("--output-directory", type=str, default=None)
    add("--temp-directory", type=str, default=None)
    add("--input-directory", type=str, default=None)
    add("--user-directory", type=str, default=None)
    add("--front-end-root", type=str, default=None, help="serve this folder as the web UI")
    add("--front-end-version", type=str, default=None, help="accepted for compatibility; the installed package is used")
    # device and precision
    add("--cpu", action="store_true")
    add("--cuda-device", type=int, default=None, metavar="DEVICE_ID")
    add("--default-device", type=int, default=None)
    add("--directml", type=int, nargs="?", const=-1, default=None)
    add("--oneapi-device-selector", type=str, default=None)
    add("--cuda-malloc", action="store_true")
    add("--disable-cuda-malloc", action="store_true")
    for flag in ("--force-fp32", "--force-fp16", "--fp32-unet", "--fp64-unet", "--bf16-unet", "--fp16-unet",
                 "--fp16-vae", "--fp32-vae", "--bf16-vae", "--cpu-vae", "--fp16-text-enc", "--fp32-text-enc",
                 "--bf16-text-enc", "--force-channels-last", "--gpu-only", "--highvram", "--normalvram",
                 "--lowvram", "--novram", "--disable-smart-memory", "--deterministic",
                 "--use-split-cross-attention", "--use-quad-cross-attention", "--use-pytorch-cross-attention",
                 "--disable-xformers", "--force-upcast-attention", "--dont-upcast-attention",
                 "--disable-pinned-memory", "--disable-mmap", "--mmap-torch-files"):
        add(flag, action="store_true")
    add("--reserve-vram", type=float, default=None)
    add("--compile", action="store_true", help="torch.compile the UNet and VAE decoder (opt-in)")
    add("--batch-prompts", action="store_true", help="run compatible queued prompts as one batch (opt-in)")
    # execution
    add("--preview-method", type=str, default="none", choices=PREVIEW_METHODS)
    add("--preview-size", type=int, default=512)
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-classic", action="store_true")
    cache.add_argument("--cache-lru", type=int, default=0)
    cache.add_argument("--cache-none", action="store_true")
    cache.add_argument("--cache-ram", nargs="?", const=4.0, type=float, default=0)
    add("--max-history", type=int, default=10000, help="history entries kept (oldest dropped)")
    add("--default-hashing-function", type=str, choices=["md5", "sha1", "sha256", "sha512"], default="sha256")
    add("--disable-metadata", action="store_true")
    add("--disable-all-custom-nodes", action="store_true")
    add("--whitelist-custom-nodes", type=str, nargs="+", default=[])
    # process
    add("--verbose", default="INFO", const="DEBUG", nargs="?",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    add("--log-stdout", action="store_true")
    add("--dont-print-server", action="store_true")
    add("--auto-launch", action="store_true")
    add("--disable-auto-launch", action="store_true")
    add("--windows-standalone-build", action="store_true")
    add("--quick-test-for-ci", action="store_true")
    return p


UNSUPPORTED = {
    "directml": "--directml is not supported by comfyd (CUDA or CPU only)",
    "oneapi_device_selector": "--oneapi-device-selector is not supported by comfyd (CUDA or CPU only)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for attr, message in UNSUPPORTED.items():
        if getattr(args, attr) is not None:
            parser.error(message)
    # Remember whether the upload size was given: /features then reports a float, as ComfyUI does.
    args.max_upload_size_given = args.max_upload_size is not None
    if args.max_upload_size is None:
        args.max_upload_size = 100
    return args


def max_upload_bytes(args) -> int | float:
    value = round(args.max_upload_size * 1024 * 1024)
    return float(value) if args.max_upload_size_given else value


def extra_model_paths_files(args) -> list[str]:
    """--extra-model-paths-config may repeat and take several files each."""
    return [f for group in (args.extra_model_paths_config or []) for f in group]
