"""The orchestrator's own probe: an MP4/MOV's frame index and facts from its moov box through a few ranged
GETs (chalicelib.shared.mp4index), stored where the workers look for it, so a job is planned without the
cold hop to a worker; any other file is probed by a worker as before."""

from __future__ import annotations

from typing import Any

from chalicelib.service.common import logger
from chalicelib.shared.contracts import frame_index_key, video_filename
from chalicelib.shared.mp4index import read_index
from chalicelib.shared.storage import ObjectMissing, ObjectStore


def probe_container(store: ObjectStore, video_id: str, video_key: str) -> dict[str, Any] | None:
    """The video's metadata (as a worker's probe reports it), with its frame index stored at
    frame_index_key for this version of the object; None when a worker must probe it (not an MP4 this
    reader models, or no object: the worker's probe reports that with its reason)."""
    try:
        reader = store.open_ranged(video_key, block_size=256 << 10)  # the box headers, then the moov
    except ObjectMissing:
        return None
    found = read_index(reader, reader.size)
    if found is None:
        logger.info("%s: no container index this reader models; a worker probes it", video_key)
        return None
    key = frame_index_key(video_id, reader.etag)
    if store.head(key) is None:
        store.put_bytes(key, found.index_bytes(), "application/gzip")
    logger.info(
        "%s: planned from its container index, %d frames, %d of %d bytes read in %d requests",
        video_key, len(found.pts), reader.bytes_fetched, reader.size, reader.requests,
    )  # fmt: skip
    return found.video_metadata(video_filename(video_key))
