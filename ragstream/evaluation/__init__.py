"""`ragstream eval` and `ragstream train-reranker`: retrieval quality measured through the same
chunker, embedder, store, retriever and reranker code the services run."""
