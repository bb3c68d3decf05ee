"""The server's memories in RAM: at most --cache-size of them, the least recently used dropped first, and a
memory whose file changed read again (a file replaced in the store is served as it now is)."""

import shutil

from perk_cli.memory import adapt_text, adapting_runtime
from perk_cli.serve.service import Service
from perk_cli.serve.store import MemoryStore
from tests.conftest import random_init_checkpoint


def test_the_cache_keeps_the_most_recent_memories_and_rereads_a_changed_file(tmp_path):
    checkpoint = random_init_checkpoint(tmp_path / "run" / "best", seed=3,
                                        prompt={"segment_tokens": 32, "max_answer_tokens": 4})
    store = MemoryStore(tmp_path / "store")
    writer, origin = adapting_runtime(checkpoint=checkpoint)
    for name, text in (("a", "Mary went to the kitchen."), ("b", "John went to the garden. Mary left."),
                       ("c", "Sandra went to the office.")):
        adapt_text(writer, origin, text).save(store.path(name))
    service = Service(checkpoint, store, cache_size=2)
    for name in ("a", "b", "c"):
        service.ask(name, "Where is Mary?")
    assert list(service._cache) == ["b", "c"]  # a, the least recently used, was dropped
    service.ask("b", "Where is Mary?")
    assert list(service._cache) == ["c", "b"]
    before = service.memory("b")
    shutil.copy(store.path("a"), store.path("b"))  # the file changes under the server
    after = service.memory("b")
    assert after is not before and after.metadata["document_sha256"] == service.memory("a").metadata["document_sha256"]
    assert service.memory("a") is service.memory("a")  # unchanged: from RAM
