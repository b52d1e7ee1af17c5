"""logship: an etcd-driven log shipper that follows files and publishes their lines to Kafka."""

__version__ = "0.1.0"
