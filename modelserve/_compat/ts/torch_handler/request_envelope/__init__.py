"""TorchServe's request envelopes: they reshape a request before the handler and its results after it
(``service_envelope`` = ``body``, ``json``, ``kserve`` or ``kservev2``)."""
