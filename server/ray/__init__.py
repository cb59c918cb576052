"""Scale-out on Ray Serve (`nanovllm serve --data-parallel-size N`): engine replicas behind the
same FastAPI app. Imported only when that flag is given: these modules import Ray."""
