"""Files in and out of containers: the input-sync plan, harvest to durable storage, storage targets."""

from hearth.files.harvest import Harvester, HarvestPolicy, HarvestReport
from hearth.files.inputs import InputItem, inputs_digest, resolve_inputs, split_file_ids, sync_inputs
from hearth.files.manifest import MANIFEST_KEY, Manifest, ManifestEntry, SkippedEntry, SkipReason
from hearth.files.paths import container_path_to_key, key_to_container_path
from hearth.files.storage import StorageTarget, render_url

__all__ = [
    "MANIFEST_KEY",
    "HarvestPolicy",
    "HarvestReport",
    "Harvester",
    "InputItem",
    "Manifest",
    "ManifestEntry",
    "SkipReason",
    "SkippedEntry",
    "StorageTarget",
    "container_path_to_key",
    "inputs_digest",
    "key_to_container_path",
    "render_url",
    "resolve_inputs",
    "split_file_ids",
    "sync_inputs",
]
