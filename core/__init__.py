"""What every part of the product shares and that is not domain logic: settings (read from the
environment only when :func:`core.settings.get_settings` is called), Prometheus metrics, log
redaction and SLA bookkeeping. Imports no Faust and no Kafka client."""
