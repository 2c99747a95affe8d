"""kombu's filesystem transport, with messages that appear whole and are taken once.

The embedded lab's broker is a folder of message files shared by the API and every worker.
kombu's own `_put` creates `<name>.<queue>.msg` empty and then writes it, and its `_get` moves
the first matching file away without looking at locks: a consumer that lists the folder in
between takes the empty file, fails to decode it (`JSONDecodeError`, which stops the worker's
consumer) and the message is lost. Seen under load with two workers polling one folder
(tests/worker/test_nodes.py). Here a message is written under a name no consumer matches and
renamed into place, and a consumer claims it by renaming it into the processed folder beside
the queue (one file system, so the rename is atomic: of two consumers exactly one gets it).
"""

from __future__ import annotations

import os
import uuid
from queue import Empty
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

SCHEME = "kfac-filesystem"
_PARTIAL = ".partial"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        """Write `payload` whole, then make it visible to consumers in one rename."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + _PARTIAL  # ends in .partial, so no consumer's name filter matches
        try:
            with open(partial, "wb") as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue):
        """Claim the oldest message of `queue` by renaming it out of the queue folder."""
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.processed_folder, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except OSError:  # another consumer took it first
                continue
            try:
                with open(claimed, "rb") as file:
                    payload = file.read()
                if not self.store_processed:
                    os.remove(claimed)
            except OSError as exc:
                raise ChannelError(f"Cannot read file {claimed!r} from queue.") from exc
            return loads(bytes_to_str(payload))
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"
