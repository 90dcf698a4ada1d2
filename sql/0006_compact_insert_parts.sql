-- Inserted parts in the Compact format (all columns in one file) until they hold 256 MiB
-- uncompressed; merges write the bigger ones Wide. A Wide part is two files per column: a
-- 100k-row batch of l4_flow_log (155 columns) made ~320 files, and creating and later deleting
-- them (ext4 inode allocation) took about half of the insert time. Compact: 1.9x the insert rate.
-- The price is on disk while parts stay small: +2 % for l4_flow_log, +10-18 % for l7_flow_log (its
-- strings compress better in a Wide part's longer blocks) until merges pass 256 MiB (~400k l7 rows).
ALTER TABLE flow_log.l4_flow_log MODIFY SETTING min_bytes_for_wide_part = 268435456;
ALTER TABLE flow_log.l7_flow_log MODIFY SETTING min_bytes_for_wide_part = 268435456;
ALTER TABLE flow_metrics.`network.1m` MODIFY SETTING min_bytes_for_wide_part = 268435456;
ALTER TABLE flow_metrics.`network.1s` MODIFY SETTING min_bytes_for_wide_part = 268435456;
ALTER TABLE flow_metrics.`network_map.1m` MODIFY SETTING min_bytes_for_wide_part = 268435456;
ALTER TABLE flow_metrics.`network_map.1s` MODIFY SETTING min_bytes_for_wide_part = 268435456;
ALTER TABLE flow_metrics.`application.1m` MODIFY SETTING min_bytes_for_wide_part = 268435456;
ALTER TABLE flow_metrics.`application.1s` MODIFY SETTING min_bytes_for_wide_part = 268435456;
ALTER TABLE flow_metrics.`application_map.1m` MODIFY SETTING min_bytes_for_wide_part = 268435456;
ALTER TABLE flow_metrics.`application_map.1s` MODIFY SETTING min_bytes_for_wide_part = 268435456;
