-- The notification catalog: 14 types in 5 categories with their default channels.
-- Operators extend it with their own numbered script (e.g. sql/100_my_types.sql) using the same INSERTs.

INSERT INTO notification_categories (name, description) VALUES
    ('course',     'Course content and schedule'),
    ('assessment', 'Assignments, quizzes and grades'),
    ('progress',   'Milestones, certificates and completions'),
    ('social',     'Comments, replies and instructor messages'),
    ('system',     'Platform announcements and security');

INSERT INTO notification_types
    (name, category, default_in_app, default_email, default_push, critical, position, description)
VALUES
    ('COURSE_NEW_CONTENT',     'course',     true, false, true,  false, 10,  'New lesson or content added'),
    ('COURSE_UPDATE',          'course',     true, false, false, false, 20,  'Course information updated'),
    ('COURSE_SCHEDULE_CHANGE', 'course',     true, true,  true,  false, 30,  'Schedule changed'),
    ('ASSIGNMENT_DEADLINE',    'assessment', true, true,  true,  false, 40,  'Assignment due soon'),
    ('QUIZ_AVAILABLE',         'assessment', true, false, true,  false, 50,  'New quiz available'),
    ('GRADE_RELEASED',         'assessment', true, true,  true,  false, 60,  'Grade published'),
    ('MILESTONE_ACHIEVED',     'progress',   true, false, true,  false, 70,  'Learning milestone reached'),
    ('CERTIFICATE_ISSUED',     'progress',   true, true,  true,  false, 80,  'Certificate generated'),
    ('COURSE_COMPLETED',       'progress',   true, true,  false, false, 90,  'Course finished'),
    ('NEW_COMMENT',            'social',     true, false, false, false, 100, 'New comment on your content'),
    ('NEW_REPLY',              'social',     true, false, true,  false, 110, 'Reply to your comment'),
    ('INSTRUCTOR_MESSAGE',     'social',     true, true,  true,  false, 120, 'Message from an instructor'),
    ('SYSTEM_ANNOUNCEMENT',    'system',     true, false, false, false, 130, 'Platform announcement'),
    ('SECURITY_ALERT',         'system',     true, true,  true,  true,  140, 'Security-related alert');
