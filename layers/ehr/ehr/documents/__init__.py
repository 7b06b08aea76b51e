"""Clinical documents: DocumentReference attachments stored in S3 (see docs/documents.md).

``ports`` (the ``DocumentStore`` port and its in-memory fake), ``s3`` (the S3 adapter: SSE-KMS with
the tenant in the encryption context, presigned URLs), ``rules`` (what a DocumentReference write
may say about its attachment), ``service`` (the write hook, ``$upload-url``, downloads) and
``verify`` (the check that runs when an uploaded object lands).
"""
