"""How ``DownloadJobResult`` sends a job's result folder.

Two formats, chosen by the client with the call metadata ``flare-result-format``:

* ``files-v1`` (what the Session asks for): a first :class:`TransferHeader` with
  ``content_type`` :data:`FILES_CONTENT_TYPE`, ``size`` the total of the file sizes and
  ``params["files"]`` their count; then, per regular file, a header whose ``name`` is
  the path relative to the result folder (``/``-separated) and whose ``size`` is its
  length, followed by exactly that many data bytes (in chunks of at most 1 MiB). The
  client writes each file as it arrives: nothing is zipped, spooled or read back.
* no metadata: one zip archive (``application/zip``), as older clients expect.

A job's status says ``FINISHED:*`` a moment before its result folder is complete (an abort
is written at once; the sites' logs and ``summary.json`` follow). The server waits for the
folder (bounded, see ``RESULT_WAIT_MARGIN`` in ``flare_server.admin_service``); should it
still be incomplete then, the first header carries ``params[PARTIAL] == "true"`` and the
client warns that what it received is partial.

Names are untrusted on the client, whatever the format: they are checked before a
single byte of the file is written.
"""

from __future__ import annotations

#: Call metadata key by which the client names the format it wants.
METADATA_KEY = "flare-result-format"
#: The value asking for one header per file.
FILES = "files-v1"
#: ``content_type`` of the first header of a ``files-v1`` stream.
FILES_CONTENT_TYPE = "application/x-flare-files"
#: First-header param set to ``"true"`` when the result folder was still being written.
PARTIAL = "partial"
