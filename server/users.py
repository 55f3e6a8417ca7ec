"""Users and their data folders (user/<id>/), per API.md §7. Single-user mode always uses
"default"; --multi-user takes the id from the Comfy-User header. Ids starting with "__"
are system users (comfyd keeps its queue store there) and are never reachable over HTTP."""
from __future__ import annotations

import json
import logging
import os
import re
import uuid
from urllib import parse

from models import folders

log = logging.getLogger(__name__)
SYSTEM_PREFIX = "__"
DEFAULT_USER = "default"


class UnknownUser(KeyError):
    pass


class UserManager:
    def __init__(self, multi_user: bool):
        self.multi_user = multi_user
        os.makedirs(folders.state().user, exist_ok=True)
        self.users: dict[str, str] = {DEFAULT_USER: DEFAULT_USER}
        if multi_user:
            self.users = self._load_users()

    @property
    def users_file(self) -> str:
        return os.path.join(folders.state().user, "users.json")

    def _load_users(self) -> dict:
        if not os.path.isfile(self.users_file):
            return {}
        try:
            with open(self.users_file, encoding="utf-8") as f:
                users = json.load(f)
        except (OSError, ValueError) as e:
            log.error("cannot read %s (%s); starting with no users", self.users_file, e)
            return {}
        return {str(k): str(v) for k, v in users.items()} if isinstance(users, dict) else {}

    def user_id(self, request) -> str:
        user = DEFAULT_USER
        if self.multi_user and "comfy-user" in request.headers:
            user = request.headers["comfy-user"]
        # system users get the same answer as unknown ones, so they cannot be probed
        if user.startswith(SYSTEM_PREFIX) or user not in self.users:
            raise UnknownUser(f"Unknown user: {user}")
        return user

    def user_root(self, request) -> str:
        return os.path.join(folders.state().user, self.user_id(request))

    def user_path(self, request, file: str | None, create_dir: bool = True) -> str | None:
        """Absolute path of `file` inside the user's folder, or None when it would leave it
        (`..`, an absolute path, or a symlink pointing elsewhere). Raises UnknownUser."""
        root = self.user_root(request)
        path = root
        if file is not None:
            if "%" in file:  # sub-paths arrive URL-encoded once more (encodeURIComponent)
                file = parse.unquote(file)
            if "\x00" in file:
                return None
            path = os.path.abspath(os.path.join(root, file))
            if not folders.is_inside(path, root):
                return None
        parent = os.path.dirname(path)
        if create_dir and not os.path.exists(parent):
            os.makedirs(parent, exist_ok=True)
        return path

    def add_user(self, name: str) -> str:
        name = name.strip()
        if not name:
            raise ValueError("username not provided")
        if name.startswith(SYSTEM_PREFIX):
            raise ValueError("System User prefix not allowed")
        user_id = re.sub("[^a-zA-Z0-9-_]+", "-", name)
        if user_id.startswith(SYSTEM_PREFIX):
            raise ValueError("System User prefix not allowed")
        user_id = f"{user_id}_{uuid.uuid4()}"
        self.users[user_id] = name
        tmp = self.users_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.users, f)
        os.replace(tmp, self.users_file)
        return user_id
