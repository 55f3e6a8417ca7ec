"""Users and their data folders (user/<id>/), per API.md §7. Single-user mode always uses
"default"; --multi-user takes the id from the Comfy-User header. Ids starting with "__"
are system users and never reachable over HTTP."""
from __future__ import annotations

import json
import os
import re
import uuid
from urllib import parse

from models import folders

SYSTEM_PREFIX = "__"


class UnknownUser(KeyError):
    pass


class UserManager:
    def __init__(self, multi_user: bool):
        self.multi_user = multi_user
        os.makedirs(folders.state().user, exist_ok=True)
        if multi_user and os.path.isfile(self.users_file):
            with open(self.users_file) as f:
                self.users = json.load(f)
        else:
            self.users = {} if multi_user else {"default": "default"}

    @property
    def users_file(self) -> str:
        return os.path.join(folders.state().user, "users.json")

    def user_id(self, request) -> str:
        user = "default"
        if self.multi_user and "comfy-user" in request.headers:
            user = request.headers["comfy-user"]
        if user.startswith(SYSTEM_PREFIX) or user not in self.users:
            raise UnknownUser(f"Unknown user: {user}")
        return user

    def user_root(self, request) -> str:
        return os.path.join(folders.state().user, self.user_id(request))

    def user_path(self, request, file: str | None, create_dir: bool = True) -> str | None:
        """Absolute path of `file` inside the user's folder, or None when it would escape it."""
        root = self.user_root(request)
        path = root
        if file is not None:
            if "%" in file:  # sub-paths arrive URL-encoded once more
                file = parse.unquote(file)
            path = os.path.abspath(os.path.join(root, file))
            if os.path.commonpath((root, path)) != root:
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
        with open(self.users_file, "w") as f:
            json.dump(self.users, f)
        return user_id
