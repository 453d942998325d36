"""Past one machine: batch scoring and per-category fitting on a Ray cluster.

Optional (``pip install 'costfilter[ray]'``). :mod:`costfilter.sources` turns folders, globs, path lists
and filesystem URIs into image paths; :mod:`.inference` runs a model in a pool of Ray actors and
keeps the results resumable (:mod:`.store`); :mod:`.fitting` fits one model per category;
:mod:`.session` joins or starts the cluster for one command. Only the CLI and the
benchmarks import this package; the detector itself knows nothing of Ray.
"""
