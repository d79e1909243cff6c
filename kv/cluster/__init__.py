"""The cluster: the router over the partitions (kv.cluster.datastore), with
its listing (kv.cluster.listing) and batch (kv.cluster.batch) operations."""
