"""Who relayed what: usage records, reports, the cost model and byte quotas."""
