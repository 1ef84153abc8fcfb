"""Who a site's user code runs as: the site's own user, or another, unprivileged one.

Theory of operation. User code (a job's script, commands, and the ``pip install`` of its
``python_env``) is whatever a job's submitter wrote; it must not read the site's private
key or anything else only the site needs. A site that does not run as root cannot
switch users: user code runs as the site's user, sees none of the site's secrets through
what the site hands it (an allowlisted environment, no inherited descriptors, a job
folder without the kit), and the deployment keeps the kit out of its reach by running the
site as a dedicated user (docs/security.md). A site that runs as root must say as whom
user code runs, with the ``run_user_code_as`` setting:

* a user name or uid (``"nobody"``, ``"flare-jobs"``): user code runs as that user and its
  primary group, with no supplementary groups; the job folder is made usable by it, the
  kit (its key 0600, owned by root) is not;
* ``"root"``: user code runs as root, knowingly (it can read the key);
* unset: the site refuses to start, naming the setting. Running untrusted code as root
  by default is the mistake this refuses to make: an explicit choice costs one line.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from flare_protocol.errors import KitError

__all__ = [
    "SETTING",
    "UserAccount",
    "check_key_not_owned",
    "check_reachable",
    "hand_over_tree",
    "user_code_account",
]

#: The site setting that names the account (``local/settings.json``).
SETTING = "run_user_code_as"


@dataclass(frozen=True)
class UserAccount:
    """An OS account user code runs as (never root)."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, who: str, *, source: str = SETTING) -> UserAccount:
        """The account named ``who`` (a user name, or a uid in digits).

        Raises:
            KitError: no such user on this machine.
        """
        try:
            entry = pwd.getpwuid(int(who)) if who.isdigit() else pwd.getpwnam(who)
        except (KeyError, ValueError, OverflowError):
            raise KitError(
                f"{source}: '{SETTING}' names user {who!r}, which does not exist on this "
                "machine; create it (e.g. useradd --system --no-create-home flare-jobs) or "
                "name another",
                key=SETTING,
            ) from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def user_code_account(
    setting: str | None, *, source: str = SETTING, euid: int | None = None
) -> UserAccount | None:
    """The account user code runs as; None: the site's own (see the module doc).

    Raises:
        KitError: the site runs as root and the setting is unset; it names a user that does
            not exist; or the site is not root and the setting names another user.
    """
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        if setting is None:
            return None
        account = UserAccount.lookup(setting, source=source)
        if account.uid == euid:
            return None
        me = pwd.getpwuid(euid).pw_name
        raise KitError(
            f"{source}: '{SETTING}' is {setting!r}, but this site runs as {me}, not root, "
            f"and only root can run user code as another user; remove '{SETTING}' (user "
            f"code then runs as {me}) or start the site as root",
            key=SETTING,
        )
    if setting is None:
        raise KitError(
            f"{source}: this site runs as root, so user code would run as root and could "
            f"read the site's private key; set '{SETTING}' to an unprivileged user (e.g. "
            f'"nobody", or a dedicated "flare-jobs"), or to "root" to allow it knowingly',
            key=SETTING,
        )
    account = UserAccount.lookup(setting, source=source)
    return None if account.uid == 0 else account


def check_reachable(path: Path, account: UserAccount, what: str) -> None:
    """``account`` can reach ``path``: every folder above it lets it pass (``x``).

    Raises:
        KitError: naming the first folder that stops it, its mode and owner, and the fix.
    """
    path = Path(path).resolve()
    for folder in reversed(path.parents):
        try:
            st = folder.stat()
        except OSError:
            continue
        if not _may_pass(st, account):
            raise KitError(
                f"user code runs as {account.name} ('{SETTING}'), which cannot reach {what} "
                f"{path}: {folder} is mode {stat.S_IMODE(st.st_mode):04o}, owned by uid "
                f"{st.st_uid}; give the site a --workspace that {account.name} can reach "
                f"(outside the kit folder, e.g. /srv/flare/<site>) or open {folder} with "
                "chmod o+x",
                path=str(folder),
            )


def check_key_not_owned(key: Path, account: UserAccount) -> None:
    """The kit's private key does not belong to ``account`` (it could read it).

    Raises:
        KitError: naming the key, its owner and the fix.
    """
    st = Path(key).stat()
    if st.st_uid == account.uid or (st.st_gid == account.gid and st.st_mode & 0o040):
        raise KitError(
            f"the site's private key {key} can be read by {account.name}, as whom user code "
            f"runs ('{SETTING}'); chown root:root {key} && chmod 600 {key}",
            path=str(key),
        )


def hand_over_tree(root: Path, account: UserAccount) -> None:
    """Give ``root`` and everything in it to ``account`` (symlinks are not followed)."""
    os.lchown(root, account.uid, account.gid)
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.lchown(os.path.join(folder, name), account.uid, account.gid)


def _may_pass(st: os.stat_result, account: UserAccount) -> bool:
    mode = st.st_mode
    if st.st_uid == account.uid:
        return bool(mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)
