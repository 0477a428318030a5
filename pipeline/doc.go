// Package pipeline is the seqembed worker: consumer → batcher → gpurun → arrowout, wired here
// and nowhere else, with the rules that keep every record embedded exactly once.
//
// Where a record goes, one file each:
//
//   - pulled and validated: consumer (consumer/consumer.go), started by [Pipeline.Run];
//   - formed into a batch: batcher (batcher/batcher.go), fed by Run's feeder goroutine;
//   - run on a device: [Engine.Embed] (engine.go), a pool of InflightPerDevice slots per device,
//     through the retry-in-halves rule (split.go); a model with extra outputs (layers × mean, bos,
//     per-residue) runs through gpurun's EmbedAll, and its outputs become the extra columns of
//     layout version 3 (outputs.go); a model of one output keeps Embed's path (CUDA graphs);
//   - published and acked: [Pipeline] batch (pipeline.go), through arrowout.Publisher;
//   - or, a record longer than the window under --overlength chunk (consumer.Record.Chunk):
//     handed by the feeder to a chunk loop (chunk.go), which cuts it into windows
//     (batcher.Windows), runs them as its own batches through the same device pool and
//     retry-in-halves rule, merges their outputs as they come back (batcher.Merger, MeanRows)
//     and publishes one row (length the full length, chunks the windows), acked once stored.
//     Any window that fails even alone nak's the record for redelivery, nothing published (the
//     model-error dead letter does not apply: a record's runs hold only its own windows; the
//     max-deliveries rule ends a record that always fails). The model must have the
//     per-residue output of every layer it mean-pools (planChunks), as the exact mean of a
//     chunked record is the mean of its merged per-residue states.
//
// The rules, each a function with its own test:
//
//   - Heartbeat (heartbeat.go): every record the pipeline holds gets InProgress every AckWait/3
//     from the moment it is taken off the consumer (buffered, batched, running, publishing) until
//     it is acked, nak'd or termed; the batcher's queue is sized to MaxAckPending so nothing
//     waits outside that set. A backlog that takes many AckWaits to drain is never redelivered.
//   - Retry in halves (split.go, embedInHalves): a failed run is split in halves down to single
//     rows, so an out-of-memory shrinks the batch and a poison record fails alone.
//   - Dead letters (split.go, judge): a row that fails alone while rows of its batch succeed is
//     dead-lettered (model_error) and termed; if no row succeeds every input is nak'd (a broken
//     device is not the records' fault).
//   - Publish until stored (pipeline.go, publishPolicy): a failed publish is retried with
//     backoff for as long as it takes; the inputs are held under InProgress, not nak'd.
//   - Rows too large (pipeline.go, publishFitting): a row larger than a message may be (max_payload
//     or the file store's 32 MiB, less the header room) is published as row slices when it has
//     per-residue outputs (arrowout.HeaderResidues; the sink joins them). One that still cannot
//     fit (not even one residue per message) can never be stored: its record is dead-lettered
//     (output_too_large, with its size and the limit) and the rest of the batch published, never
//     retried for ever nor dropped in silence.
//   - Ack after store: an input is acked only after every output message carrying it has its
//     PubAck (a duplicate PubAck counts).
//   - Shutdown: cancelling Run's context stops pulls and naks every held record not yet in a
//     batch loop (client buffer, batcher queue and buckets); batches in flight finish until
//     Config.ShutdownTimeout less a margin, then are cancelled and nak'd, so Run always returns
//     inside the timeout. [Pipeline.Stop] abandons in-flight work at once.
//
// State has one owner each: the batcher's goroutine owns the buckets, each batch loop owns its
// batch, each chunk loop its chunked record and its merge, the Engine's slot channel owns the
// devices. The keeper heartbeats a chunked record from the feeder until it is acked or nak'd,
// however many windows it runs; at shutdown the records still queued for a chunk loop are
// nak'd with the batcher's. Faults are injected through Config.Hooks
// (tests only). The raw benchmark drives an [Engine] without NATS, so both measure one path.
package pipeline
