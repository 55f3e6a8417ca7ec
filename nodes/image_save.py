"""Where saved files go and how they are numbered (API.md §11.12).

`get_save_image_path` is also `folder_paths.get_save_image_path` for custom node packs, so it keeps
ComfyUI's signature and 5-tuple result.
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


def expand_prefix(prefix: str, width: int, height: int) -> str:
    """%width%, %height% and %year%, %month%, %day%, %hour%, %minute%, %second% (local time,
    zero-padded to two digits except the year). Other %...% tokens stay literal."""
    now = time.localtime()
    for token, value in (("%width%", str(width)), ("%height%", str(height)), ("%year%", str(now.tm_year)),
                         ("%month%", f"{now.tm_mon:02d}"), ("%day%", f"{now.tm_mday:02d}"),
                         ("%hour%", f"{now.tm_hour:02d}"), ("%minute%", f"{now.tm_min:02d}"),
                         ("%second%", f"{now.tm_sec:02d}")):
        prefix = prefix.replace(token, value)
    return prefix


def _counter_of(name: str, stem: str) -> int | None:
    """The number in "<stem>_<number>_...", 0 when it is not a number, None when the file
    does not belong to this stem (case-insensitive only where the OS is)."""
    head = name[:len(stem) + 1]
    if os.path.normcase(head[:-1]) != os.path.normcase(stem) or head[-1:] != "_":
        return None
    try:
        return int(name[len(stem) + 1:].split("_")[0])
    except ValueError:
        return 0


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0):
    """(full folder, file stem, next counter, subfolder, expanded prefix).

    The prefix's directory part is the subfolder (created on demand, refused outside
    output_dir); the counter continues after the highest number already used by the stem."""
    if "%" in filename_prefix:
        filename_prefix = expand_prefix(filename_prefix, image_width, image_height)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    stem = os.path.basename(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    common = os.path.commonpath((output_dir, os.path.abspath(folder)))
    if common != output_dir:
        err = ("**** ERROR: Saving image outside the output folder is not allowed."
               f"\n full_output_folder: {os.path.abspath(folder)}"
               f"\n         output_dir: {output_dir}"
               f"\n         commonpath: {common}")
        log.error(err)
        raise Exception(err)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        return folder, stem, 1, subfolder, filename_prefix
    numbers = [n for n in (_counter_of(name, stem) for name in names) if n is not None]
    return folder, stem, (max(numbers) + 1 if numbers else 1), subfolder, filename_prefix
