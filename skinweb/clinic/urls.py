from django.urls import path

from skinweb.clinic import relabel, removed, views

app_name = "clinic"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("cases/", views.case_list, name="case_list"),
    path("patients/", views.patient_list, name="patient_list"),
    path("patients/new/", views.patient_create, name="patient_create"),
    path("patients/<int:pk>/", views.patient_detail, name="patient_detail"),
    path("patients/<int:pk>/edit/", views.patient_edit, name="patient_edit"),
    path("patients/<int:pk>/lesions/new/", views.lesion_create, name="lesion_create"),
    path("lesions/<int:pk>/", views.lesion_detail, name="lesion_detail"),
    path("lesions/<int:pk>/edit/", views.lesion_edit, name="lesion_edit"),
    path("lesions/<int:pk>/upload/", views.lesion_upload, name="lesion_upload"),
    path("cases/<int:pk>/", views.case_detail, name="case_detail"),
    path("cases/<int:pk>/status/", views.case_status, name="case_status"),
    path("cases/<int:pk>/feedback/", views.case_feedback, name="case_feedback"),
    path("cases/<int:pk>/retry/", views.case_retry, name="case_retry"),
    path("cases/<int:pk>/flag/", views.case_flag, name="case_flag"),
    path("cases/<int:pk>/taken/", views.case_taken, name="case_taken"),
    path("cases/<int:pk>/move/", views.case_move, name="case_move"),
    path("cases/<int:pk>/remove/", views.case_remove, name="case_remove"),
    path("cases/<int:pk>/release-score/", views.case_release_score, name="case_release_score"),
    path("cases/<int:pk>/image/", views.case_image, name="case_image"),
    path("cases/<int:pk>/heatmap/", views.case_heatmap, name="case_heatmap"),
    path("cases/<int:pk>/compare/<str:ref>/", views.case_compare, name="case_compare"),
    path("reference/<int:version>/<int:position>/image/", views.reference_image, name="reference_image"),
    path("cases/<int:pk>/report.pdf", views.case_report, name="case_report"),
    path("cases/<int:pk>/case.dcm", views.case_dicom, name="case_dicom"),
    path("dicom/import/", views.dicom_import, name="dicom_import"),
    path("cases/export.csv", views.case_export, name="case_export"),
    # Administrators' relabel queue: beside the registry's pages, kept by the clinic whose cases it labels.
    path("manage/relabel/", relabel.relabel_queue, name="relabel_queue"),
    path("manage/relabel/label/", relabel.relabel, name="relabel"),
    path("manage/relabel/<int:pk>/training/", relabel.training_switch, name="training_switch"),
    # Images removed by mistake: the administrator sees and restores them.
    path("manage/removed/", removed.removed_list, name="removed_list"),
    path("manage/removed/<int:pk>/image/", removed.removed_image, name="removed_image"),
    path("manage/removed/<int:pk>/restore/", removed.restore, name="case_restore"),
]
