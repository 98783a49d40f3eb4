from django.apps import AppConfig


class RetrievalConfig(AppConfig):
    name = "retrieval"
    verbose_name = "Landmark retrieval"

    def ready(self) -> None:
        from retrieval import signals  # noqa: F401 - connects the receivers
