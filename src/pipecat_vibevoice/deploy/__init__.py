"""Deployments of the TTS pool beyond one process (the top floor: may use serving and engine).

:mod:`.ray_serve` puts the serving app on Ray Serve (``pip install ".[ray]"``); it is
not imported here, so the package works without Ray. The Kubernetes manifests live in
the repository's ``deploy/k8s/``.
"""
