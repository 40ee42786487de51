"""Checkpoints named on the Hugging Face hub: ``hf://OWNER/REPO[/FILE][@REVISION]``.

Wherever a checkpoint path is accepted (``serve``, ``play --ckpt``, ``info``, ``finetune --ckpt``,
``convert``, ``ckpt:`` policies), such a name is resolved to a local file by
``huggingface_hub.hf_hub_download``: a download with its progress bar into the shared HF cache
(``HF_HOME`` / ``HF_HUB_CACHE``), a pinned ``REVISION`` (a branch, tag or commit), and
``HF_HUB_OFFLINE=1`` honoured (then only the cache is read). The file is then read by the same
safe loader as a local one (:func:`nitrogen.model.checkpoint.read_checkpoint`).

``FILE`` defaults to the repository's known checkpoint (:data:`DEFAULT_FILES`: ``ng.pt`` for
``nvidia/NitroGen``); other repositories must name it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import CheckpointError

HUB_PREFIX = "hf://"
DEFAULT_FILES: dict[str, str] = {"nvidia/NitroGen": "ng.pt"}
"""The checkpoint file of a repository whose name gives no file."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://`` name."""

    repo_id: str
    filename: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(path: str | os.PathLike[str]) -> bool:
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def parse_hub_ref(text: str) -> HubRef:
    """``hf://OWNER/REPO[/FILE][@REVISION]`` -> :class:`HubRef`; a ``CheckpointError`` says what is malformed."""
    if not is_hub_ref(text):
        raise CheckpointError(f"not a hub name: it must start with {HUB_PREFIX}")
    body = text[len(HUB_PREFIX) :]
    body, at, revision = body.partition("@")
    if at and not _REVISION.match(revision):
        raise CheckpointError("hub name: the revision after @ must be a branch, tag or commit")
    parts = body.split("/")
    if len(parts) < 2 or not _NAME.match(parts[0]) or not _NAME.match(parts[1]):
        raise CheckpointError(f"hub name must be {HUB_PREFIX}OWNER/REPO[/FILE][@REVISION], e.g. hf://nvidia/NitroGen")
    repo_id = f"{parts[0]}/{parts[1]}"
    filename = "/".join(parts[2:])
    if not filename:
        if repo_id not in DEFAULT_FILES:
            raise CheckpointError(
                f"hub name {HUB_PREFIX}{repo_id} gives no file; name the checkpoint: {HUB_PREFIX}{repo_id}/FILE"
            )
        filename = DEFAULT_FILES[repo_id]
    pure = PurePosixPath(filename)
    if pure.is_absolute() or any(p in ("", ".", "..") for p in filename.split("/")):
        raise CheckpointError("hub name: the file must be a plain path inside the repository")
    return HubRef(repo_id, filename, revision or None)


def resolve_hub_path(text: str) -> Path:
    """The local file of a ``hf://`` name: from the HF cache, downloaded (with progress) if it is not there."""
    ref = parse_hub_ref(text)
    import huggingface_hub
    from huggingface_hub import constants, errors

    try:
        return Path(huggingface_hub.hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision))
    except errors.LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.is_offline_mode() else "the hub cannot be reached"
        raise CheckpointError(
            f"{ref}: not in the local HF cache ({constants.HF_HUB_CACHE}) and {why}; "
            "download it once while online (or unset HF_HUB_OFFLINE)"
        ) from None
    except errors.GatedRepoError:
        raise CheckpointError(f"{ref}: the repository is gated; accept its terms and log in (hf auth login)") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(f"{ref}: no such repository on the hub (or it is private: log in)") from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{ref}: the repository has no revision {ref.revision!r}") from None
    except errors.EntryNotFoundError:
        raise CheckpointError(f"{ref}: the repository has no file {ref.filename!r}") from None
    except (errors.HfHubHTTPError, OSError) as exc:
        raise CheckpointError(f"{ref}: download failed ({type(exc).__name__})") from None


def local_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """A checkpoint argument as a local path: ``hf://`` names resolved, anything else as given."""
    if is_hub_ref(path):
        return resolve_hub_path(str(path))
    return Path(path)
