"""Features extracted once per (backbone, weights, preprocessing, dataset, split, spec) into a verified,
content-addressed cache (:mod:`.cache`), by :mod:`.extract`."""
