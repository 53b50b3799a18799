"""Remotes: where bundles are shared (S3 or any S3-compatible store, the Hugging Face Hub).

`base` holds the Remote protocol, the remote URL grammar and the `remote` table; `sync`
holds what both kinds share (reading a local bundle, verifying what comes back, importing
rows and channel positions); `s3` and `hf` talk to their service and import boto3 or
huggingface_hub only inside the functions that use them.
"""
