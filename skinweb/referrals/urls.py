from django.urls import path

from skinweb.referrals import views

app_name = "referrals"

urlpatterns = [
    path("", views.mine, name="mine"),
    path("new/", views.create, name="create"),
    path("triage/", views.triage, name="triage"),
    path("practices/", views.practices, name="practices"),
    path("practices/<int:pk>/unlink/", views.practice_unlink, name="practice_unlink"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/answer/", views.answer, name="answer"),
    path("<int:pk>/images/", views.more_images, name="more_images"),
    path("<int:pk>/images/<int:case_pk>/", views.image, name="image"),
    path("<int:pk>/overview/", views.overview, name="overview"),
]
