-- The outcome of a batch of `received` messages' steps in one statement (the work bus consumer's
-- batch): all of it is committed or none, even when the writer re-runs a failed group commit one
-- write per transaction. A batch committed in part left a later message of a patient with its
-- deliveries while an earlier one was still `received` (issue #9). Each message is processed as
-- by `passerelle_processed`, in array order, so delivery ids follow the batch's order. The
-- deliveries of message i are the next `p_counts[i]` entries of `p_destinations`/`p_order_keys`
-- (a flat list: PostgreSQL arrays of arrays must be rectangular).
CREATE OR REPLACE FUNCTION passerelle_processed_all(
    p_channel text, p_now double precision, p_worker text,
    p_messages bigint[], p_statuses text[], p_findings text[], p_transformed bytea[], p_vars bytea[],
    p_counts integer[], p_destinations text[], p_order_keys text[]
) RETURNS TABLE (processed_message bigint, delivery_ids bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    first integer := 1;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_messages, 1), 0) LOOP
        processed_message := p_messages[i];
        delivery_ids := passerelle_processed(
            p_messages[i], p_channel, p_statuses[i], p_findings[i], p_transformed[i], p_vars[i], p_now,
            coalesce(p_destinations[first:first + p_counts[i] - 1], '{}'),
            coalesce(p_order_keys[first:first + p_counts[i] - 1], '{}'), p_worker);
        first := first + p_counts[i];
        RETURN NEXT;
    END LOOP;
END $$;
