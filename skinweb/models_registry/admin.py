from django.contrib import admin

from skinweb.models_registry.models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["version", "status", "arch", "input_size", "threshold", "created_at", "published_at"]
    list_filter = ["status", "arch"]
    search_fields = ["version"]
    readonly_fields = [f.name for f in ModelVersion._meta.fields]

    def has_add_permission(self, request):
        return False  # versions come from model files: manage.py publish_model
