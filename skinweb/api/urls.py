from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import SimpleRouter

from skinweb.api import views

app_name = "api"

router = SimpleRouter()
router.register("patients", views.PatientViewSet, basename="patient")
router.register("lesions", views.LesionViewSet, basename="lesion")
router.register("cases", views.CaseViewSet, basename="case")
router.register("dicom", views.DicomViewSet, basename="dicom")
router.register("tokens", views.TokenViewSet, basename="token")
router.register("referrals", views.ReferralViewSet, basename="referral")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("v1/", include(router.urls)),
    re_path(r"^(?!docs/).*$", views.NoSuchRoute.as_view()),  # unnamed: no route of the API's own
]
