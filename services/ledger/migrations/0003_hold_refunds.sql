-- Refunds of captured holds, idempotent by the caller's refund reference.
CREATE TABLE hold_refunds (
    hold_id              uuid        NOT NULL REFERENCES holds (hold_id),
    refund_reference_id  text        NOT NULL,
    amount               bigint      NOT NULL CHECK (amount > 0),
    transaction_id       uuid        NOT NULL REFERENCES transactions (transaction_id),
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hold_id, refund_reference_id)
);
