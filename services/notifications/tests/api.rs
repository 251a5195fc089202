//! The `notifications` service through real gRPC clients, against a fresh database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

bank_testkit::standard_service_tests!(
    bank_notifications::Notifications,
    bank_notifications::MIGRATOR,
    ["bank.notifications.v1.NotificationsService", "bank.notifications.v1.NotificationsAdminService"]
);
