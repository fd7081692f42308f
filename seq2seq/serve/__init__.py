"""``seq2seq serve``: trained models behind a REST API with dynamic batching, and a page.

* :mod:`~seq2seq.serve.batcher`: concurrent requests' sentences decoded together;
* :mod:`~seq2seq.serve.registry`: the served models and their per-request engines;
* :mod:`~seq2seq.serve.app`: the FastAPI application (API, page, limits, metrics);
* :mod:`~seq2seq.serve.schemas`, :mod:`~seq2seq.serve.metrics`: its JSON bodies and
  Prometheus metrics.

FastAPI, uvicorn and prometheus-client are the optional ``serve`` extra.
"""
