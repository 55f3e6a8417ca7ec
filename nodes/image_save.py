"""Where saved files go and how they are numbered (API.md §11.12)."""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


def expand_prefix(prefix: str, width: int, height: int) -> str:
    """%width%, %height%, %year%, %month%, %day%, %hour%, %minute%, %second% (local time)."""
    now = time.localtime()
    for token, value in (("%width%", width), ("%height%", height), ("%year%", now.tm_year),
                         ("%month%", f"{now.tm_mon:02d}"), ("%day%", f"{now.tm_mday:02d}"),
                         ("%hour%", f"{now.tm_hour:02d}"), ("%minute%", f"{now.tm_min:02d}"),
                         ("%second%", f"{now.tm_sec:02d}")):
        prefix = prefix.replace(token, str(value))
    return prefix


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0):
    """(folder, file stem, next counter, subfolder, prefix). The counter continues after the
    highest number among files named "<stem>_<number>_..." in the folder."""
    if "%" in filename_prefix:
        filename_prefix = expand_prefix(filename_prefix, image_width, image_height)
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    stem = os.path.basename(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(folder))) != output_dir:
        raise Exception("Saving image outside the output folder is not allowed."
                        f"\n full_output_folder: {os.path.abspath(folder)}\n         output_dir: {output_dir}")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        return folder, stem, 1, subfolder, filename_prefix
    numbers = []
    for name in names:
        head = name[:len(stem) + 1]
        if os.path.normcase(head[:-1]) != os.path.normcase(stem) or head[-1:] != "_":
            continue
        try:
            numbers.append(int(name[len(stem) + 1:].split("_")[0]))
        except ValueError:
            numbers.append(0)
    return folder, stem, (max(numbers) + 1 if numbers else 1), subfolder, filename_prefix
