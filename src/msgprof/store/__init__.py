"""The store room: file-backed per-client queues (docs/storage.md is the contract).

Data flows one way: `queue` (QueueStore, the facade the server holds) → `modes` (one class per
--ack-after point) → `writer` (the segment writer they share) → `segment` (format, framing,
walk); `wal` holds the write-ahead log and its entries, `recovery` opens a store, `sync` makes
writes durable, `reader` reads a store's files from outside. The store knows no wire: it
raises its own `errors`, and the server chooses the status to answer with.
"""
