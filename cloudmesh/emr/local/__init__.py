"""The local EMR emulator: the EMR and S3 wire APIs on 127.0.0.1, with real Spark steps."""
