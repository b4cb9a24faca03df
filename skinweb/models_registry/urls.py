from django.urls import path

from skinweb.models_registry import views

app_name = "manage"
urlpatterns = [
    path("models/", views.model_list, name="model_list"),
    path("models/retrain/", views.retrain, name="retrain"),
    path("models/<int:pk>/", views.model_detail, name="model_detail"),
    path("models/<int:pk>/publish/", views.publish, name="publish"),
    path("models/<int:pk>/cancel/", views.cancel, name="cancel"),
    path("models/<int:pk>/shadow/", views.shadow, name="shadow"),
]
